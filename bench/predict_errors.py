"""How long `mmser predict` takes to refuse bad arguments and inputs: wall seconds of the console script, per case.

The checks run before torch and MLflow are imported, so each refusal should take well under a second; the
`import torch` and `import mlflow` rows are what a refusal after loading would cost at least. The model is a
card beside a placeholder checkpoint (the checks read the card, never the weights). The last line printed is
one JSON object. Usage: `python bench/predict_errors.py [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

MMSER = Path(sys.executable).parent / "mmser"


def _seconds(argv: list[str], cwd: Path, repeat: int) -> tuple[float, str]:
    """Best wall time of `argv` over `repeat` runs, and its last stderr line."""
    best, last = float("inf"), ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        last = (done.stderr.strip().splitlines() or [""])[-1]
    return best, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sf.write(root / "clip.wav", (0.3 * np.sin(np.arange(16000) / 8.0)).astype(np.float32), 16000)
        (root / "broken.wav").write_bytes(b"RIFF\x00\x00 not audio")
        (root / "model.ckpt").write_bytes(b"")
        (root / "model.json").write_text(json.dumps({"classes": ["ang", "hap", "sad", "neu"], "modality": "fusion",
                                                     "encoders": {}, "audio_pooling": "sum", "sample_rate": 16000}))
        (root / "bad.csv").write_text("path,text\nclip.wav,hi\nclip.wav,hi, there\n")
        model = ["--model", str(root / "model.ckpt")]
        cases = {
            "missing --audio file": [*model, "--audio", str(root / "none.wav"), "--text", "hi"],
            "undecodable --audio": [*model, "--audio", str(root / "broken.wav"), "--text", "hi"],
            "fusion model without --text": [*model, "--audio", str(root / "clip.wav")],
            "CSV with a bad row": [*model, "--csv", str(root / "bad.csv")],
            "default model before make repro": ["--audio", str(root / "clip.wav"), "--text", "hi"],
        }
        results = {}
        for name, args in cases.items():
            seconds, line = _seconds([str(MMSER), "predict", *args], root, repeat)
            results[name] = {"seconds": round(seconds, 3), "stderr": line}
            print(f"{name}: {seconds:.3f} s  ({line})", file=sys.stderr)
        for module in ("torch", "mlflow"):
            seconds, _ = _seconds([sys.executable, "-c", f"import {module}"], root, repeat)
            results[f"import {module}"] = {"seconds": round(seconds, 3)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
