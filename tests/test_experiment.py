"""MLflow: the experiment opens on its training runs, and generate_demo logs a run like every other stage."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmser.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, dir_md5, file_md5, setup_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_experiment_is_tagged_to_open_on_training_runs(store: str) -> None:
    import mlflow

    assert EXPERIMENT_KIND == "custom_model_development"  # the value MLflow 3.17's UI reads for "model training"
    new = setup_experiment("fresh")
    assert mlflow.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    old = mlflow.create_experiment("made-before")  # an experiment from an earlier version, without the tag
    assert setup_experiment("made-before") == old
    assert mlflow.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    mine = mlflow.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    setup_experiment("chosen")
    assert mlflow.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice is kept


def test_generate_demo_logs_its_params_and_output_hashes(tmp_path: Path, store: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"]["utterances_per_speaker"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "data" / "demo"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(REPO / "stages" / "generate_demo.py"), "--out", str(out), "--params",
                    str(tmp_path / "params.yaml")], cwd=tmp_path, env=env, check=True, capture_output=True)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    (run,) = [r for (r,) in db.execute("select run_uuid from tags where key = 'mmser.stage' and value = ?",
                                       ("generate_demo",))]
    logged = dict(db.execute("select key, value from params where run_uuid = ?", (run,)).fetchall())
    assert logged == {"base.seed": "42", "base.sample_rate": "16000", "demo.utterances_per_speaker": "4"}
    tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run,)).fetchall())
    assert tags["output.manifest.md5"] == file_md5(out / "manifest.csv")
    assert tags["output.corpus.md5"] == dir_md5(out)
    assert "mlflow.parentRunId" in tags  # nested under the pipeline's parent run, as every stage's
    metrics = dict(db.execute("select key, value from metrics where run_uuid = ?", (run,)).fetchall())
    assert metrics["sessions"] == 5 and metrics["utterances"] > 0
