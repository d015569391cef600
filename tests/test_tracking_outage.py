"""A tracking server that is down: the real stage fails fast with one clear line and leaves no partial output."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd

from conftest import free_port
from mmser.tracking import HTTP_DEFAULTS, server_unreachable

REPO = Path(__file__).resolve().parents[1]


def test_server_unreachable_tells_a_closed_port_from_a_live_server():
    assert "refused" in server_unreachable(f"http://127.0.0.1:{free_port()}").lower()
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server_unreachable(f"http://127.0.0.1:{server.server_port}") is None  # any answer: it is up
    finally:
        server.shutdown()


def test_stage_fails_fast_with_one_line_when_the_server_is_down(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    rows = [{"id": f"s{s}_{spk}_{i}", "label": ["ang", "hap", "sad", "neu"][i % 4], "speaker": f"{s}{spk}",
             "session": str(s), "text": "words", "path": "x.wav"}
            for s in (1, 2, 3) for spk in "FM" for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "utterances.csv", index=False)
    out = tmp_path / "splits.json"
    out.write_text("{}")  # a stale output from an earlier run must not survive a failed one
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    for name in HTTP_DEFAULTS:  # mmser's own defaults, not a caller's
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(REPO / "stages/split.py"), "--table", "utterances.csv",
                             "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True)

    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow tracking server {uri} is unreachable ("), result.stderr[-3000:]
    assert "rerun `dvc repro` once the server is back" in last
    assert "Traceback" not in result.stderr
    assert not out.exists()
