"""eGeMAPS spread over worker processes gives each clip the vector one process gives it, in order."""

from __future__ import annotations

import numpy as np

from mmser.encoders.egemaps import EGeMAPSEncoder


def test_worker_processes_give_the_single_process_vectors_in_order() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    # Clips that differ (pitch, length, loudness), so that a reordering would show.
    waves = [(0.1 + 0.05 * i) * np.sin(2 * np.pi * (120 + 40 * i) * t[: 8000 + 1000 * i]).astype(np.float32)
             + rng.normal(scale=0.01, size=8000 + 1000 * i).astype(np.float32) for i in range(6)]
    alone = EGeMAPSEncoder(processes=1).encode(waves)
    spread = EGeMAPSEncoder(processes=2).encode(waves)
    assert len(spread) == 6 and all(v.shape == (1, 88) for v in spread)
    assert all(np.array_equal(a, b) for a, b in zip(alone, spread))
    assert not np.array_equal(alone[0], alone[1])
