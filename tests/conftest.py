"""Shared pytest fixtures: tiny offline models and data built in temporary directories."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vggish_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding random-weight VGGish + PCA files under the release names (real architecture)."""
    from torchvggish.torchvggish import VGG, make_layers

    from mmser.encoders.vggish import VGGISH_PCA, VGGISH_WEIGHTS

    directory = tmp_path_factory.mktemp("vggish_weights")
    torch.manual_seed(0)
    model = VGG(make_layers(), postprocess=False)  # postprocess=False: its Postprocessor downloads
    torch.save(model.state_dict(), directory / VGGISH_WEIGHTS)
    # Eigenvectors scaled so that PCA outputs spread over the [-2, 2] quantisation range.
    pca = {
        "pca_eigen_vectors": torch.randn(128, 128) * 20.0,
        "pca_means": torch.randn(128, 1) * 0.01,
    }
    torch.save(pca, directory / VGGISH_PCA)
    return directory


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port (SQLite store, artifacts in tmp_path); yields its URI."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "mlflow-server.log", "wb")
    server = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", str(tmp_path / "mlflow-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 120  # a cold start imports a lot: ~10 s on 2 busy cores
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                output = (tmp_path / "mlflow-server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start:\n{output}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # a worker that outlived the server
        log.close()
