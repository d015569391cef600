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


# Known sentences spoken by espeak-ng (a real speech synthesiser, installed by .ci/run): real speech for the
# Whisper tests, made here because no recording may ship with the tests and nothing is downloaded.
SENTENCES = ["Kids are talking by the door.", "Dogs are sitting by the door.",
             "The weather is lovely today.", "Please bring me a cup of coffee."]


@pytest.fixture(scope="session")
def spoken_clips(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """(wav path, sentence) for each of SENTENCES, spoken by espeak-ng at its own 22.05 kHz."""
    import shutil

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is needed for the Whisper tests: apt-get install espeak-ng (as .ci/run does)")
    directory = tmp_path_factory.mktemp("spoken")
    clips = []
    for i, sentence in enumerate(SENTENCES):
        path = directory / f"s{i}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(path), sentence], check=True,
                       capture_output=True)
        clips.append((path, sentence))
    return clips


@pytest.fixture(scope="session")
def whisper_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the packaged Whisper base, assembled once for the session (145 MB)."""
    from mmser.encoders.whisper import assemble_packaged

    home = tmp_path_factory.mktemp("whisper_cache")
    assemble_packaged(home / "whisper")
    return home


@pytest.fixture
def whisper_cache(whisper_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MMSER_CACHE_DIR pointing at the session's cache with the assembled Whisper base (embeddings go there too)."""
    monkeypatch.setenv("MMSER_CACHE_DIR", str(whisper_home))
    return whisper_home
