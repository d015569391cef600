"""Decode any file libsndfile reads (WAV, FLAC, MP3, OGG Vorbis/Opus, AIFF, ...) to 16 kHz mono float32 with a real
resampler, and say why a file is unusable."""

from __future__ import annotations

import re

import numpy as np
import soundfile as sf
import soxr

# Below this peak amplitude a clip carries no usable signal (16-bit quantisation step is 3e-5).
SILENCE_PEAK = 1e-4
# libsndfile's log line for a chunk whose header promises more bytes than the file holds: `data : 64000 (should
# be 31979)`. 0xFFFFFFFF is the placeholder that streaming writers leave, not a promise.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_PLACEHOLDER = 0xFFFFFFFF - 8
# Frames decoded at a time when a file is only checked: memory stays flat however long the file is (4 MiB mono).
SCAN_BLOCK = 1 << 20


def load_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`; stereo is averaged, other rates resampled by soxr."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != sample_rate and mono.size:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def truncation(extra_info: str) -> str | None:
    """Why a file is cut short, from libsndfile's log of its header (`SoundFile.extra_info`), or None.

    libsndfile decodes what is there, so a WAV cut in the middle (an interrupted copy) would pass as a shorter clip
    whose label describes speech that is missing.
    """
    for chunk, promised, held in _SHORT_CHUNK.findall(extra_info):
        if int(held) < int(promised) < _PLACEHOLDER:
            return f"truncated: the {chunk} chunk promises {promised} bytes, the file holds {held}"
    return None


def read_checked(path: str, sample_rate: int = 16000) -> tuple[str | None, np.ndarray | None]:
    """(reason the file is unusable or None, waveform if it decoded): decodes once, never raises for a bad file."""
    try:
        short = truncation(sf.info(path).extra_info)
        if short is not None:
            return short, None
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
    return "empty" if info.frames == 0 else truncation(info.extra_info)


def audio_problem(path: str) -> tuple[str | None, float]:
    """(reason the file is unusable or None, duration in seconds) — never raises for a bad file.

    The verdicts of read_checked, decoded block by block at the file's own rate (the silence peak is taken before
    resampling): checking a corpus holds one block in memory, not a whole (maybe 20-minute) file.
    """
    frames, peak, finite = 0, 0.0, True
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            if (short := truncation(f.extra_info)) is not None:
                return short, f.frames / rate
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
