"""bench/gpu_check.py, the prepared GPU extraction check, run here with --device cpu (the same checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["all_ok"] and result["vggish_device"] == result["text_device"] == "cpu"
    assert {"text_ok", "vggish_ok", "front_end_ok", "memory_ok"} <= set(result)
    assert result["text_min_cosine"] >= 0.999 and result["vggish_quantised_agree_within_1"] == 1.0
    assert result["vggish_utt_per_s"] > 0 and 0 < result["vggish_fraction_of_peak"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_gpu_check_without_a_gpu_says_so() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    message = "error: no CUDA GPU here; run this on a GPU machine, or pass --device cpu"
    assert out.stderr.strip().splitlines() == [message]
