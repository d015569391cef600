"""Sweep benchmark: the same 4-experiment sweep (train.lr x train.dropout), queued, run at -j 1 and at -j 2.

A copy of this checkout gets tiny params (the demo corpus at 8 utterances per speaker, fusion only,
fold 1, 4 epochs, one candidate head); its shared stages (data, split, embeddings) run once and
are committed. Each -j then runs in its own copy of that prepared repository, so DVC's run cache cannot
serve one from the other, and every run logs to one `mlflow server` (SQLite takes one writer at a
time, so parallel experiments go through a server). Timed: `dvc exp run --run-all -j N`, which blocks
until the queue is done. The last line printed is one JSON object.
Usage: `python bench/sweep.py` (about 6-8 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SWEEP = ["-S", "train.lr=0.001,0.01", "-S", "train.dropout=0.0,0.5"]  # DVC's grid: 2 x 2 = 4 experiments
TINY = {"demo": {"utterances_per_speaker": 8},
        "train": {"heads": ["server"], "weight_decay": [0.0], "folds": [1], "epochs": 4, "batch_size": 8},
        "evaluate": {"bootstrap_resamples": 100}}

log = logging.getLogger("bench")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command, fail with its output's tail; its stdout."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def commit(repo: Path, message: str, env: dict[str, str]) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.email=bench@mmser", "-c", "user.name=bench", "commit", "-qm", message], repo, env)


def copy_checkout(dest: Path, env: dict[str, str], overrides: dict | None = None) -> Path:
    """This checkout's tracked and untracked-unignored files as a fresh git repository, with `overrides` applied
    to its params (default: the sweep's tiny params; {} keeps the defaults)."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO, env).split()
    for name in files:
        if name.startswith(("tests/", "metrics/")) or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in (TINY if overrides is None else overrides).items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest, env)
    commit(dest, "tiny params", env)
    return dest


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port, SQLite store and artifacts in `folder`; yields its URI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with open(folder / "mlflow-server.log", "wb") as out:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow-server.db'}",
             "--artifacts-destination", str(folder / "mlflow-artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"],
            cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        try:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"mlflow server did not start; see {folder / 'mlflow-server.log'}")
                time.sleep(0.5)
            yield uri
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def timed_sweep(prepared: Path, dest: Path, jobs: int, env: dict[str, str]) -> float:
    """Queue the sweep in a copy of `prepared`, run it with `dvc exp run --run-all -j jobs`; seconds."""
    shutil.copytree(prepared, dest, symlinks=True)
    run(["dvc", "exp", "run", "--queue", *SWEEP], dest, env)
    start = time.perf_counter()
    run(["dvc", "exp", "run", "--run-all", "-j", str(jobs)], dest, env)
    seconds = time.perf_counter() - start
    done = run(["dvc", "exp", "ls", "--name-only"], dest, env).split()
    if len(done) != 4:
        sys.exit(f"-j {jobs}: {len(done)} experiments finished, not 4")
    log.info("-j %d: 4 experiments in %.1f s", jobs, seconds)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="parallel experiments to time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mmser-sweep-") as tmp, mlflow_server(Path(tmp)) as uri:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
               "MLFLOW_TRACKING_URI": uri}
        prepared = copy_checkout(Path(tmp) / "prepared", env)
        start = time.perf_counter()
        run(["dvc", "repro", "split", "extract_text", "extract_audio"], prepared, env)
        commit(prepared, "shared stages", env)
        log.info("shared stages in %.1f s", time.perf_counter() - start)
        seconds = {jobs: timed_sweep(prepared, Path(tmp) / f"j{jobs}", jobs, env) for jobs in args.jobs}
    result = {"experiments": 4, "sweep": " ".join(SWEEP), **{f"jobs_{j}_s": round(s, 1) for j, s in seconds.items()},
              "cpus": os.cpu_count(), "loadavg_1m_before": round(load[0], 2)}
    if 1 in seconds:
        result.update({f"speedup_jobs_{j}": round(seconds[1] / s, 2) for j, s in seconds.items() if j != 1})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
