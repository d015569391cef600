"""Training under DDP on 2 CPU processes (gloo): same weights as one process, one MLflow run, outputs from rank 0.

Each case runs the real train stage script, as `dvc repro` does: under `ddp` Lightning re-runs that command
for the second process; for two "nodes" on loopback the test starts the command twice with NODE_RANK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import free_port
from mmser.embeddings import save_embeddings

pytestmark = pytest.mark.slow  # real processes over gloo, minutes on 2 cores: `make test-e2e`

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["ang", "hap", "sad", "neu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Table, split and embeddings for 90 utterances: 48 train (divisible by 2 processes), 20 val, 22 test.
    Classes are imbalanced (neu is half of them), so that class weights differ."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(3)
    n = 90
    ids = [f"u{i:03d}" for i in range(n)]
    y = np.minimum(np.arange(n) % 6, 3)
    text = rng.normal(size=(n, 10)) + np.eye(4)[y] @ rng.normal(size=(4, 10)) * 0.5
    audio = rng.normal(size=(n, 6)) * 30 + 50 + np.eye(4)[y] @ rng.normal(size=(4, 6)) * 10
    pd.DataFrame({"id": ids, "label": [CLASSES[k] for k in y]}).to_csv(root / "table.csv", index=False)
    save_embeddings(root / "text.npz", ids, [v[None].astype(np.float32) for v in text], {"name": "t", "dim": 10})
    save_embeddings(root / "audio.npz", ids, [v[None].astype(np.float32) for v in audio], {"name": "a", "dim": 6})
    fold = {"name": "fold1", "held_out": "x", "train": ids[:48], "val": ids[48:68], "test": ids[68:]}
    (root / "splits.json").write_text(json.dumps({"protocol": "random", "folds": [fold]}))
    return root


def _params(root: Path, name: str, class_weights: bool = False, **distributed) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # Dropout draws its masks per process, so bitwise-comparable training needs it off (see README).
    params["train"].update(epochs=5, batch_size=8, dropout=0.0, heads=["gated"], weight_decay=[0.0], lr=1e-2,
                           folds=[1], class_weights=class_weights)
    params["distributed"].update(distributed)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train(root: Path, name: str, env: dict | None = None, class_weights: bool = False,
           **distributed) -> subprocess.Popen:
    params = _params(root, name, class_weights, **distributed)
    cmd = [sys.executable, str(REPO / "stages" / "train.py"), "--modality", "fusion",
           "--table", str(root / "table.csv"), "--splits", str(root / "splits.json"), "--text", str(root / "text.npz"),
           "--audio", str(root / "audio.npz"), "--out", str(root / name), "--params", str(params)]
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", **(env or {})}
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if env is None or key not in env:
            full_env.pop(key, None)
    return subprocess.Popen(cmd, cwd=root, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _record(root: Path, name: str) -> dict:
    return json.loads((root / name / "candidates.json").read_text())


def _assert_same_training(root: Path, a: str, b: str) -> None:
    for model in ("fold1", "final"):  # the fold fit (chosen on validation) and the refit on all data
        wa, wb = _weights(root / a / model / "model.ckpt"), _weights(root / b / model / "model.ckpt")
        assert wa.keys() == wb.keys()
        # gloo sums the two shares' gradients in another order than one process does; Adam divides by the
        # root of tiny second moments, so a 1e-7 rounding difference can reach 1e-4 in a weight after 5 epochs.
        # The per-epoch losses below pin the computation itself down to 1e-5.
        for key in wa:
            assert torch.allclose(wa[key], wb[key], atol=5e-4, rtol=1e-3), (model, key)
    ha, hb = pd.DataFrame(_record(root, a)["history"]), pd.DataFrame(_record(root, b)["history"])
    assert list(ha["epoch"]) == list(hb["epoch"]) == [1, 2, 3, 4, 5]
    # Every epoch's weights, not only the kept checkpoint's: the validation loss follows them.
    assert np.allclose(ha["val_loss"], hb["val_loss"], rtol=1e-5, atol=1e-6)
    assert np.allclose(ha["val_ua"], hb["val_ua"]) and np.allclose(ha["train_loss"], hb["train_loss"], atol=1e-5)


def _train_runs(root: Path) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mmser")
    runs = client.search_runs([experiment.experiment_id], "tags.`mmser.stage` = 'train'")
    return {r.info.run_id: r for r in runs}


@pytest.fixture(scope="module")
def single(corpus: Path) -> Path:
    _finish(_train(corpus, "single"))
    return corpus


def test_ddp_on_two_cpu_processes_gives_the_single_process_weights(single: Path) -> None:
    root = single
    before = set(_train_runs(root))
    _finish(_train(root, "ddp", accelerator="cpu", devices=2, strategy="ddp"))
    _assert_same_training(root, "single", "ddp")
    record = _record(root, "ddp")
    assert record["processes"] == 2
    # One MLflow run for the job, from rank 0, with the per-epoch curves: no empty twin from the other rank.
    new = {k: v for k, v in _train_runs(root).items() if k not in before}
    assert list(new) == [record["mlflow_run_id"]]
    run = new[record["mlflow_run_id"]]
    assert run.data.tags["processes"] == "2" and run.data.params["distributed.strategy"] == "ddp"
    assert {"fold1.val_ua", "fold1.train_loss"} <= set(run.data.metrics)


def test_ddp_spawn_gives_the_single_process_weights_and_one_run(single: Path) -> None:
    root = single
    before = set(_train_runs(root))
    _finish(_train(root, "spawn", accelerator="cpu", devices=2, strategy="ddp_spawn"))
    _assert_same_training(root, "single", "spawn")
    new = set(_train_runs(root)) - before
    assert new == {_record(root, "spawn")["mlflow_run_id"]}  # none from the parent


def test_two_nodes_on_loopback_train_as_one_job(single: Path) -> None:
    root = single
    before = set(_train_runs(root))
    node = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    # The same command on each "node"; only NODE_RANK differs (what a user sets on each machine).
    procs = [_train(root, "nodes", env={**node, "NODE_RANK": str(rank)}, accelerator="cpu", devices=1, num_nodes=2,
                    strategy="ddp") for rank in (0, 1)]
    for proc in procs:
        _finish(proc)
    _assert_same_training(root, "single", "nodes")
    assert _record(root, "nodes")["processes"] == 2
    assert len(set(_train_runs(root)) - before) == 1  # node 1 logged nothing


def test_class_weighted_loss_under_ddp_matches_one_process(corpus: Path) -> None:
    # Each process's weighted loss is normalised by the whole global batch's label weights, not its own share's.
    single = _train(corpus, "weighted-single", class_weights=True)
    _finish(single)
    _finish(_train(corpus, "weighted-ddp", class_weights=True, accelerator="cpu", devices=2, strategy="ddp"))
    _assert_same_training(corpus, "weighted-single", "weighted-ddp")


def test_global_batch_must_split_evenly_over_processes(corpus: Path) -> None:
    proc = _train(corpus, "odd", accelerator="cpu", devices=3, strategy="ddp")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1  # before any process is started
    assert "error: train.batch_size 8 must be a multiple of the 3 processes" in out
    assert not (corpus / "odd").exists()
