"""eGeMAPSv02 functionals from openSMILE: the standard 88-d acoustic feature set for SER, fully offline."""

from __future__ import annotations

import multiprocessing
import os
import sys
import weakref

import numpy as np

_SMILE = None  # one openSMILE extractor per process (the pool's workers build their own)


def _smile():
    global _SMILE
    if _SMILE is None:
        import opensmile

        _SMILE = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.Functionals)
    return _SMILE


def _functionals(item: tuple[np.ndarray, int]) -> np.ndarray:
    wave, sample_rate = item
    return _smile().process_signal(wave, sample_rate).to_numpy(dtype=np.float32).reshape(1, -1)


# parallel.py has this function's twin: importing it here would make it part of this encoder's code identity
# (identity.code_files), so that an edit to training's process pool recomputed every cached eGeMAPS vector.
def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class EGeMAPSEncoder:
    """16 kHz mono waveforms -> one 88-d eGeMAPSv02 functionals vector each.

    openSMILE runs one clip on one core (about 65 ms for a 3 s clip), so a batch of clips is spread over
    `processes` worker processes (default: every usable core); each clip's vector is the same either way.
    """

    name = "egemaps"

    def __init__(self, *, sample_rate: int = 16000, processes: int | None = None):
        self.sample_rate = sample_rate
        self.dim = len(_smile().feature_names)
        self.processes = processes or usable_cores()
        self._pool = None

    def identity(self) -> dict:
        """What determines the features (for metadata and cache keys)."""
        import opensmile

        return {"encoder": "egemaps", "feature_set": "eGeMAPSv02", "opensmile": opensmile.__version__,
                "dim": self.dim}

    def encode(self, waveforms: list) -> list[np.ndarray]:
        """A (1, 88) float32 array per waveform (numpy arrays or CPU tensors)."""
        items = [(np.asarray(w, dtype=np.float32), self.sample_rate) for w in waveforms]
        if self.processes < 2 or len(items) < 2:
            return [_functionals(item) for item in items]
        if self._pool is None:  # forked on Linux: workers start at once, with openSMILE already imported
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
            self._pool = context.Pool(self.processes)
            weakref.finalize(self, self._pool.terminate)
        return self._pool.map(_functionals, items, chunksize=max(1, len(items) // (4 * self.processes)))
