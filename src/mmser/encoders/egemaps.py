"""eGeMAPSv02 functionals from openSMILE: the standard 88-d acoustic feature set for SER, fully offline."""

from __future__ import annotations

import numpy as np


class EGeMAPSEncoder:
    """16 kHz mono waveforms -> one 88-d eGeMAPSv02 functionals vector each."""

    name = "egemaps"

    def __init__(self, *, sample_rate: int = 16000):
        import opensmile

        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                     feature_level=opensmile.FeatureLevel.Functionals)
        self.sample_rate = sample_rate
        self.dim = len(self.smile.feature_names)

    def identity(self) -> dict:
        """What determines the features (for metadata and cache keys)."""
        import opensmile

        return {"encoder": "egemaps", "feature_set": "eGeMAPSv02", "opensmile": opensmile.__version__,
                "dim": self.dim}

    def encode(self, waveforms: list) -> list[np.ndarray]:
        """A (1, 88) float32 array per waveform (numpy arrays or CPU tensors)."""
        return [self.smile.process_signal(np.asarray(w, dtype=np.float32), self.sample_rate)
                .to_numpy(dtype=np.float32).reshape(1, -1) for w in waveforms]
