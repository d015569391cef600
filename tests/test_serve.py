"""The MLflow pyfunc model: logged with its card, registered, served over HTTP with the same answers as predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import free_port
from mmser.cli import main
from test_predict import CLASSES, TEXTS, build_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A sqlite tracking store (artifacts beside it) in a temporary folder, and tiny models to log into it."""
    root = tmp_path_factory.mktemp("serve")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    patch.setenv("DVC_ROOT", str(root))  # mmser.tracking puts the artifact folder at this "repository root"
    patch.setenv("HF_HUB_OFFLINE", "1")
    yield {"root": root, "models": build_models(root / "models")}
    patch.undo()


def _predict_cli(capsys, model: str, audio: Path, text: str) -> dict:
    assert main(["predict", "--model", model, "--audio", str(audio), "--text", text]) == 0
    return json.loads(capsys.readouterr().out)


def _post(url: str, payload: dict) -> list[dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def _wait_ready(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def test_served_model_answers_as_mmser_predict(store: dict, capsys, tmp_path: Path) -> None:
    from mmser.pyfunc import log_pyfunc_model

    models = store["models"]
    clips, checkpoint = models["clips"], models["checkpoints"]["fusion"]
    uri = log_pyfunc_model(checkpoint, registered_name="mmser-test")
    assert uri == "models:/mmser-test/1"

    expected = _predict_cli(capsys, str(checkpoint), clips["b"], TEXTS[1])
    assert _predict_cli(capsys, uri, clips["b"], TEXTS[1]) == expected  # the MLflow model, loaded by mmser predict

    port = free_port()
    log_file = tmp_path / "serve.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # uvicorn
    with log_file.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
                                   "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ping", server, timeout=120)
        url = f"http://127.0.0.1:{port}/invocations"
        records = [{"text": TEXTS[1], "audio_path": str(clips["b"])},
                   {"text": TEXTS[0], "audio_path": str(clips["broken"])},
                   {"text": "", "audio_path": str(clips["a"])}]
        by_records = _post(url, {"dataframe_records": records})
        frame = pd.DataFrame(records)
        by_split = _post(url, {"dataframe_split": frame.to_dict(orient="split")})
    except BaseException:
        print(log_file.read_text()[-3000:])
        raise
    finally:
        _stop(server)

    for served in (by_records, by_split):
        assert len(served) == 3
        assert served[0]["label"] == expected["label"]
        assert [served[0][f"p_{c}"] for c in CLASSES] == pytest.approx(list(expected["probs"].values()), abs=1e-6)
        assert served[0]["error"] is None
        assert served[1]["error"].startswith("audio undecodable") and served[1]["label"] is None
        assert served[2]["error"] == "empty text"


def test_register_best_chooses_the_modality_on_validation_and_registers_its_refit(store: dict, capsys) -> None:
    import shutil

    import mlflow

    from mmser.pyfunc import register_best
    from mmser.tracking import setup_experiment

    models = store["models"]
    folder = store["root"] / "pipeline-models"
    experiment_id = setup_experiment("mmser")
    records = {}
    # text validates better than fusion on its chosen candidate: text's refit is registered, whatever test says.
    for modality, val_ua in (("text", 0.81), ("fusion", 0.80)):
        final = folder / modality / "final"
        final.mkdir(parents=True)
        shutil.copy(models["checkpoints"][modality], final / "model.ckpt")
        shutil.copy(models["checkpoints"][modality].with_suffix(".json"), final / "model.json")
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train {modality}") as run:
            records[modality] = {"mlflow_run_id": run.info.run_id, "selected": {
                "candidate": "server/wd=0", "val_ua": val_ua, "refit": {"utterances": 40, "epochs": 3}}}
    with mlflow.start_run(experiment_id=experiment_id, run_name="evaluate") as evaluate:  # as the stage calls it
        registered = register_best(records, folder, registered_name="mmser-best", alias="best")
        assert mlflow.active_run().info.run_id == evaluate.info.run_id
    assert (registered["modality"], registered["candidate"], registered["version"]) == ("text", "server/wd=0", 1)
    assert registered["model_uri"] == "models:/mmser-best@best"

    client = mlflow.tracking.MlflowClient()
    version = client.get_model_version_by_alias("mmser-best", "best")
    assert int(version.version) == 1 and version.tags["modality"] == "text"
    assert "validation" in version.tags["selection"] and version.tags["trained_on"].startswith("all 40")
    assert version.run_id == records["text"]["mlflow_run_id"]  # logged on the chosen modality's train run
    assert client.get_run(records["text"]["mlflow_run_id"]).info.status == "FINISHED"

    assert main(["predict", "--model", "models:/mmser-best@best", "--text", TEXTS[0]]) == 0
    by_alias = json.loads(capsys.readouterr().out)
    assert main(["predict", "--model", str(models["checkpoints"]["text"]), "--text", TEXTS[0]]) == 0
    assert by_alias == json.loads(capsys.readouterr().out)
