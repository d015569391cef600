"""Whisper on this CPU: ASR real-time factor, and encoder clips/s fed the clip's own frames vs the 30-s window.

On the first N clips of a manifest folder (manifest.csv with path[, text]): the packaged Whisper base
transcribes them (greedy, language detected, as params.yaml's asr defaults; WER against the manifest's
text when it has one), and the encoder embeds them twice, unpadded and padded to Whisper's 30-s window,
mean-pooled over the clip's frames; the cosine between the two runs says what skipping the padding
changes; int8 against float32 weights likewise. Nothing is cached: every figure is computed here.
Prints one JSON object. Usage: `python bench/whisper.py ../shared/data/ravdess-sample [--clips 24]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mmser.asr import Transcriber, word_error_rate  # noqa: E402
from mmser.data.audio import load_audio  # noqa: E402
from mmser.encoders.whisper import WhisperEncoder  # noqa: E402


def _cosines(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    values = [float(x.ravel() @ y.ravel() / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b)]
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4)}


def _timed_encode(encoder: WhisperEncoder, waves: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    encoder.encode(waves[:1])  # warm-up
    start = time.perf_counter()
    out = encoder.encode(waves)
    return out, time.perf_counter() - start


def main() -> None:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="folder with manifest.csv (path relative to it[, text])")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--compute-type", default="int8")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.corpus)
    table = pd.read_csv(root / "manifest.csv", keep_default_na=False).sample(frac=1.0, random_state=0)
    table = table.iloc[:args.clips]
    waves = [load_audio(str(root / p)) for p in table["path"]]
    audio_seconds = sum(w.size for w in waves) / 16000
    result = {"corpus": str(root), "clips": len(waves), "audio_seconds": round(audio_seconds, 1),
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "compute_type": args.compute_type}

    transcriber = Transcriber(compute_type=args.compute_type, device="cpu")
    transcriber.transcribe(waves[:1])  # warm-up
    start = time.perf_counter()
    records = transcriber.transcribe(waves)
    asr_seconds = time.perf_counter() - start
    result["asr"] = {"seconds": round(asr_seconds, 2), "real_time_factor": round(asr_seconds / audio_seconds, 4),
                     "languages": pd.Series([r["language"] for r in records]).value_counts().to_dict()}
    if "text" in table.columns:
        result["asr"]["wer_vs_manifest"] = word_error_rate(table["text"].tolist(), [r["text"] for r in records])

    encoders = {"clip": WhisperEncoder(compute_type=args.compute_type, device="cpu"),
                "padded_30s": WhisperEncoder(compute_type=args.compute_type, device="cpu", padded=True)}
    pooled = {}
    for name, encoder in encoders.items():
        pooled[name], seconds = _timed_encode(encoder, waves)
        result[f"encoder_{name}"] = {"seconds": round(seconds, 2), "clips_per_s": round(len(waves) / seconds, 2)}
    result["speedup_clip_vs_padded"] = round(result["encoder_clip"]["clips_per_s"]
                                             / result["encoder_padded_30s"]["clips_per_s"], 1)
    result["cosine_clip_vs_padded"] = _cosines(pooled["clip"], pooled["padded_30s"])
    if args.compute_type != "float32":
        fp32, _ = _timed_encode(WhisperEncoder(compute_type="float32", device="cpu"), waves)
        result[f"cosine_{args.compute_type}_vs_float32"] = _cosines(pooled["clip"], fp32)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
