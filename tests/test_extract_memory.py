"""Audio extraction streams: its peak memory does not grow with the number of files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tiny_speech import write_wavs

SECONDS, FEW, MANY = 20, 8, 48
# Run in a fresh interpreter so that ru_maxrss is this extraction's peak alone. The encoder is a cheap summary:
# what is measured is the extractor (decoding in a DataLoader worker, batches, cache), not a model.
SCRIPT = """
import resource, sys
import numpy as np
from mmser.cache import EmbeddingCache
from mmser.extract import extract_audio

class Summary:
    name = "summary"
    def identity(self):
        return {"encoder": "summary", "dim": 2}
    def encode(self, waves):
        return [np.array([[float(w.mean()), float(w.std())]], np.float32) for w in waves]

with EmbeddingCache(sys.argv[1]) as cache:
    vectors, stats = extract_audio(sys.argv[2:], Summary(), cache, sample_rate=16000, workers=1,
                                   utterances_per_batch=4)
assert stats.misses == len(sys.argv) - 2 == len(vectors)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_kib(cache: Path, paths: list[str]) -> tuple[int, int]:
    """Peak resident memory (KiB) of the extracting process and of its largest child (the decoding worker)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), *paths], capture_output=True, text=True,
                         check=True)
    main, worker = out.stdout.split()[-2:]
    return int(main), int(worker)


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    paths = write_wavs(tmp_path / "wav", [SECONDS * 16000] * MANY)
    few = _peak_kib(tmp_path / "few.sqlite", paths[:FEW])
    many = _peak_kib(tmp_path / "many.sqlite", paths)
    held = (MANY - FEW) * SECONDS * 16000 * 4 // 1024  # KiB the extra files' float32 waveforms would take if kept
    assert held > 45_000
    for small, large, who in zip(few, many, ("extracting process", "decoding worker")):
        assert large - small < held / 3, f"{who}: peak {small} KiB for {FEW} files, {large} KiB for {MANY}"
