"""Decode any WAV/FLAC to 16 kHz mono float32 with a real resampler, and say why a file is unusable."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

# Below this peak amplitude a clip carries no usable signal (16-bit quantisation step is 3e-5).
SILENCE_PEAK = 1e-4


def load_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`; stereo is averaged, other rates resampled by soxr."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != sample_rate and mono.size:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def read_checked(path: str, sample_rate: int = 16000) -> tuple[str | None, np.ndarray | None]:
    """(reason the file is unusable or None, waveform if it decoded): decodes once, never raises for a bad file."""
    try:
        wave = load_audio(path, sample_rate)
    except Exception as err:  # soundfile raises several types for broken files
        return f"undecodable: {type(err).__name__}: {err}".replace("\n", " "), None
    if wave.size == 0:
        return "empty", None
    if not np.isfinite(wave).all():
        return "non_finite_samples", wave
    if np.abs(wave).max() < SILENCE_PEAK:
        return "silent", wave
    return None, wave


def audio_problem(path: str, sample_rate: int = 16000) -> tuple[str | None, float]:
    """(reason the file is unusable or None, duration in seconds) — never raises for a bad file."""
    problem, wave = read_checked(path, sample_rate)
    return problem, (wave.size / sample_rate if wave is not None else 0.0)
