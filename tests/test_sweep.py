"""Many experiments at once: queued `dvc exp` runs in parallel share one MLflow server and one embedding cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_pipeline import BIN, _commit, _copy_repo, _set_params

# DVC's grid syntax: comma-separated values of each -S, crossed -> 2 x 2 = 4 queued experiments.
SWEEP = ["-S", "train.lr=0.001,0.01", "-S", "train.dropout=0.0,0.5"]
TINY = {"demo": {"utterances_per_speaker": 8},
        "train": {"heads": ["server"], "weight_decay": [0.0], "folds": [1], "epochs": 4, "batch_size": 8},
        "evaluate": {"bootstrap_resamples": 100}}

# One cache writer. The racy moment is two processes creating one file: before each file, both meet
# (each touches its own mark and spins until the other's exists), then write batches, half of their
# keys shared with the other writer.
_WRITER = """
import sys
from pathlib import Path
import numpy as np
from mmser.cache import EmbeddingCache
folder, who, other, files, batches = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
for f in range(files):
    (folder / f"{who}{f}").touch()
    while not (folder / f"{other}{f}").exists():
        pass
    with EmbeddingCache(folder / f"c{f}.sqlite") as cache:
        for b in range(batches):
            cache.put_many((f"shared-{b}-{i}" if i % 2 else f"{who}-{b}-{i}", np.full((2, 8), b * 100 + i, np.float32))
                           for i in range(20))
"""


def test_two_processes_write_one_cache_concurrently(tmp_path: Path) -> None:
    from mmser.cache import EmbeddingCache

    files, batches = 60, 4
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), who, other, str(files), str(batches)],
                                stderr=subprocess.PIPE, text=True) for who, other in (("a", "b"), ("b", "a"))]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr  # neither gave up on "database is locked"
    assert not list(tmp_path.glob("*.damaged-*"))  # a busy file is never mistaken for a damaged one
    expected = {(f"shared-{b}-{i}" if i % 2 else f"{who}-{b}-{i}"): b * 100 + i
                for who in ("a", "b") for b in range(batches) for i in range(20)}
    for f in range(files):
        with EmbeddingCache(tmp_path / f"c{f}.sqlite") as cache:
            assert len(cache) == len(expected) == 2 * batches * 10 + batches * 10
            found, damaged = cache.get_many(expected)
            assert not damaged and set(found) == set(expected)
            assert all(found[k].shape == (2, 8) and (found[k] == v).all() for k, v in expected.items())


def _dvc(args: list[str], repo: Path, tracking_uri: str, timeout: float = 600) -> str:
    """`dvc <args>` in `repo` with MLFLOW_TRACKING_URI exported, as a user's shell would; its stdout."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result.stdout


def _queue_states(repo: Path, tracking_uri: str) -> dict[str, str]:
    """Task -> status (Queued, Running, Success, Failed) from `dvc queue status`."""
    rows = [line.split() for line in _dvc(["queue", "status"], repo, tracking_uri).splitlines()[1:]]
    return {row[0]: row[-1] for row in rows if len(row) >= 3 and row[-1] in ("Queued", "Running", "Success",
                                                                           "Failed")}


@pytest.mark.slow
def test_queued_sweep_runs_two_at_a_time_and_logs_every_run_to_one_server(tmp_path: Path, mlflow_server: str
                                                                          ) -> None:
    from mlflow.tracking import MlflowClient

    repo = _copy_repo(tmp_path / "repo")
    _set_params(repo, **TINY)
    _commit(repo, "tiny params")
    # Data, split and embeddings once in the baseline; the sweep changes only train params.
    _dvc(["repro", "split", "extract_text", "extract_audio"], repo, mlflow_server)
    _commit(repo, "shared stages")

    _dvc(["exp", "run", "--queue", *SWEEP], repo, mlflow_server)
    assert list(_queue_states(repo, mlflow_server).values()) == ["Queued"] * 4
    _dvc(["queue", "start", "-j", "2"], repo, mlflow_server)  # workers inherit this shell's environment
    try:
        deadline = time.monotonic() + 900
        while (states := _queue_states(repo, mlflow_server)) and {"Queued", "Running"} & set(states.values()):
            assert time.monotonic() < deadline, states
            time.sleep(5)
        failed = [task for task, state in states.items() if state != "Success"]
        logs = {task: _dvc(["queue", "logs", task], repo, mlflow_server)[-3000:] for task in failed}
        assert not failed, logs
    finally:
        _dvc(["queue", "stop"], repo, mlflow_server)

    # DVC collected all 4, each with its own params and metrics.
    shown = json.loads(_dvc(["exp", "show", "--json"], repo, mlflow_server))
    experiments = {e["name"]: e["data"] for row in shown for e in (row.get("experiments") or [])
                   for e in e["revs"]}
    assert len(experiments) == 4
    grid = set()
    for data in experiments.values():
        train = data["params"]["params.yaml"]["data"]["train"]
        grid.add((train["lr"], train["dropout"]))
        summary = data["metrics"]["metrics/summary.json"]["data"]
        assert 0.0 <= summary["fusion"]["ua"] <= 1.0
    assert grid == {(lr, dropout) for lr in (0.001, 0.01) for dropout in (0.0, 0.5)}
    listed = _dvc(["exp", "ls", "--name-only"], repo, mlflow_server).split()
    assert sorted(listed) == sorted(experiments)

    # Every experiment's runs reached the server, tagged with its name, nested under its own parent run;
    # nothing was written to an embedded store (the repository's or a temporary copy's).
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_name = yaml.safe_load((repo / "params.yaml").read_text())["tracking"]["experiment"]
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    for name, data in experiments.items():
        runs = client.search_runs([experiment_id], filter_string=f"tags.dvc_exp_name = '{name}'")
        by_stage: dict[str, list] = {}
        for run in runs:
            by_stage.setdefault(run.data.tags["mmser.stage"], []).append(run)
        assert {s: len(r) for s, r in by_stage.items()} == {"pipeline": 1, "train": 3, "evaluate": 1}, name
        parent = by_stage["pipeline"][0]
        assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r is not parent)
        assert sorted(r.info.run_name for r in by_stage["train"]) == ["train audio", "train fusion", "train text"]
        assert all(r.info.status == "FINISHED" for r in by_stage["train"])
        train = data["params"]["params.yaml"]["data"]["train"]
        logged = {k: v for k, v in parent.data.params.items() if k in ("train.lr", "train.dropout")}
        assert logged == {"train.lr": str(train["lr"]), "train.dropout": str(train["dropout"])}, name
        summary = data["metrics"]["metrics/summary.json"]["data"]
        assert summary["mlflow"]["parent_run_id"] == parent.info.run_id
    assert not (repo / "mlflow.db").exists() and not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
