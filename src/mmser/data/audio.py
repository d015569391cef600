"""Decode any WAV/FLAC to 16 kHz mono float32 with a real resampler, and say why a file is unusable."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

# Below this peak amplitude a clip carries no usable signal (16-bit quantisation step is 3e-5).
SILENCE_PEAK = 1e-4
# Frames decoded at a time when a file is only checked: memory stays flat however long the file is (4 MiB mono).
SCAN_BLOCK = 1 << 20


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


def header_problem(path: str) -> str | None:
    """Why a file cannot be audio, from its header alone (undecodable, or no samples); None when it may be."""
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several types for broken files
        return f"undecodable: {type(err).__name__}: {err}".replace("\n", " ")
    return "empty" if info.frames == 0 else None


def audio_problem(path: str) -> tuple[str | None, float]:
    """(reason the file is unusable or None, duration in seconds) — never raises for a bad file.

    The verdicts of read_checked, decoded block by block at the file's own rate (the silence peak is taken before
    resampling): checking a corpus holds one block in memory, not a whole (maybe 20-minute) file.
    """
    frames, peak, finite = 0, 0.0, True
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            for block in f.blocks(blocksize=SCAN_BLOCK, dtype="float32", always_2d=True):
                mono = block.mean(axis=1)
                frames += mono.size
                if finite and not np.isfinite(mono).all():
                    finite = False
                elif finite and mono.size:
                    peak = max(peak, float(np.abs(mono).max()))
    except Exception as err:  # soundfile raises several types for broken files
        return f"undecodable: {type(err).__name__}: {err}".replace("\n", " "), 0.0
    duration = frames / rate
    if frames == 0:
        return "empty", 0.0
    if not finite:
        return "non_finite_samples", duration
    if peak < SILENCE_PEAK:
        return "silent", duration
    return None, duration
