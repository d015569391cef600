"""Frozen VGGish audio encoder (torchvggish port) with a torch log-mel front end.

Weights are never downloaded: they are read from a configured directory or the torch hub cache,
and a missing file fails at once (`MissingWeightsError`) instead of falling back to random weights.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvggish import mel_features, vggish_params
from torchvggish.torchvggish import VGG, make_layers

from mmser.encoders.device import (as_device_tensor, autocast, autocast_dtype, precision_name, resolve_device,
                                   store_matmul_weights_in)
from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError

log = logging.getLogger(__name__)

VGGISH_WEIGHTS = "vggish-10086976.pth"
VGGISH_PCA = "vggish_pca_params-970ea276.pth"
RELEASE_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1"

SAMPLE_RATE = vggish_params.SAMPLE_RATE  # 16 kHz
WINDOW = int(round(SAMPLE_RATE * vggish_params.STFT_WINDOW_LENGTH_SECONDS))  # 400 samples
HOP = int(round(SAMPLE_RATE * vggish_params.STFT_HOP_LENGTH_SECONDS))  # 160 samples
FFT_LENGTH = 2 ** int(np.ceil(np.log2(WINDOW)))  # 512, as mel_features derives it
EXAMPLE_FRAMES = vggish_params.NUM_FRAMES  # 96 frames = 0.96 s, hop 96 (no overlap)
MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 15600 samples (0.975 s) = one example
EMBEDDING_DIM = vggish_params.EMBEDDING_SIZE  # 128


# --------------------------------------------------------------------------- front end


@functools.lru_cache(maxsize=None)
def _mel_matrix_np() -> np.ndarray:
    """HTK mel matrix (257, 64), built by torchvggish's own code so both front ends share it."""
    return mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=vggish_params.NUM_MEL_BINS,
        num_spectrogram_bins=FFT_LENGTH // 2 + 1,
        audio_sample_rate=SAMPLE_RATE,
        lower_edge_hertz=vggish_params.MEL_MIN_HZ,
        upper_edge_hertz=vggish_params.MEL_MAX_HZ,
    )


def _periodic_hann(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Periodic (not symmetric) Hann, as mel_features.periodic_hann.
    return torch.hann_window(WINDOW, periodic=True, dtype=dtype, device=device)


def _front_end_dtype(device: torch.device) -> torch.dtype:
    # float64 like the numpy reference: in float32 the FFT noise floor of a loud tone sits near
    # LOG_OFFSET in quiet bins and shifts their log by ~3e-4. MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def n_examples(n_samples: int) -> int:
    """Number of 0.96 s examples VGGish makes from n_samples at 16 kHz (>= 1: short clips are padded)."""
    n_frames = 1 + (max(n_samples, MIN_SAMPLES) - WINDOW) // HOP
    return 1 + (n_frames - EXAMPLE_FRAMES) // EXAMPLE_FRAMES


def log_mel_examples(waveform: torch.Tensor) -> torch.Tensor:
    """VGGish input examples (n_examples, 1, 96, 64) from a 1-D 16 kHz waveform, on its device.

    Matches `torchvggish.vggish_input.waveform_to_examples(x, 16000)` (floor framing, incomplete
    trailing frames and examples dropped). Unlike it, a clip shorter than one example is zero-padded
    at the end to exactly one example, so every clip yields at least one; callers that must know
    which clips were short compare the length with `MIN_SAMPLES`.
    """
    if waveform.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {tuple(waveform.shape)}")
    dtype = _front_end_dtype(waveform.device)
    x = waveform.to(dtype)
    if x.numel() < MIN_SAMPLES:
        x = torch.nn.functional.pad(x, (0, MIN_SAMPLES - x.numel()))
    frames = x.unfold(0, WINDOW, HOP) * _periodic_hann(x.device, dtype)  # (n_frames, 400)
    magnitude = torch.fft.rfft(frames, n=FFT_LENGTH).abs()  # zero-padded at the end, as np.fft.rfft
    mel = torch.as_tensor(_mel_matrix_np(), dtype=dtype, device=x.device)
    log_mel = torch.log(magnitude @ mel + vggish_params.LOG_OFFSET).float()  # (n_frames, 64)
    n_ex = 1 + (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES
    examples = log_mel[: n_ex * EXAMPLE_FRAMES].reshape(n_ex, EXAMPLE_FRAMES, -1)
    return examples.unsqueeze(1)


# --------------------------------------------------------------------------- weights


def _hub_checkpoints_dir() -> Path:
    # torch.hub.get_dir() honours $TORCH_HOME (default ~/.cache/torch/hub) without touching the network.
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_message(missing: list[str], searched: Path, from_config: bool) -> str:
    where = (
        f"{searched}/ (extract_audio.vggish_weights_dir in params.yaml)"
        if from_config
        else f"{searched}/ ($TORCH_HOME/hub/checkpoints/), or set extract_audio.vggish_weights_dir "
        "in params.yaml to a directory that holds them"
    )
    urls = "\n".join(f"  {RELEASE_URL}/{name}" for name in missing)
    return (
        f"VGGish weights not found: {', '.join(missing)}.\n"
        f"Put them in {where}.\n"
        f"Download them on a machine with internet access from the torchvggish release:\n{urls}\n"
        "Nothing is downloaded at run time and no random weights are used. Offline alternative: "
        "set `extract_audio.encoder: egemaps` in params.yaml."
    )


def _find_files(weights_dir: str | Path | None, names: tuple[str, ...]) -> list[Path]:
    """Paths of `names` in weights_dir (or the hub cache when None); MissingWeightsError names any absent."""
    searched = Path(weights_dir).expanduser() if weights_dir is not None else _hub_checkpoints_dir()
    paths = [searched / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MissingWeightsError(_missing_message(missing, searched, weights_dir is not None))
    return paths


def find_vggish_weights(weights_dir: str | None) -> tuple[Path, Path]:
    """Locate the VGGish and PCA state dicts in weights_dir, else the torch hub cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)."""
    weights, pca = _find_files(weights_dir, (VGGISH_WEIGHTS, VGGISH_PCA))
    return weights, pca


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hash_prefix(path: Path, sha256: str) -> None:
    # torch hub names release files <name>-<first 8 hex of sha256>.pth; a mismatch means a different file.
    expected = path.stem.rsplit("-", 1)[-1]
    if not sha256.startswith(expected):
        log.warning("%s: sha256 %s… does not match the release hash %s in its name", path, sha256[:8], expected)


def _numpy_safe_globals() -> list[Any]:
    # The release PCA file pickles numpy arrays (saved with numpy 1.x, hence the numpy.core name);
    # allow exactly the numpy rebuild functions/types so weights_only=True still applies.
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    reconstruct = core.multiarray._reconstruct
    allowed: list[Any] = [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    allowed += [type(np.dtype(t)) for t in ("f4", "f8")]
    return allowed


def _load_state_dict(path: Path) -> dict[str, Any]:
    """torch.load a state dict (weights_only) or raise InvalidWeightsError naming the file."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise InvalidWeightsError(
            f"{path} is not a readable PyTorch state dict ({type(err).__name__}: {str(err)[:200]}). "
            f"Re-download it from {RELEASE_URL}/{path.name}."
        ) from err
    if not isinstance(state, dict):
        raise InvalidWeightsError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def _load_vgg(path: Path) -> VGG:
    """VGGish CNN (features + embeddings) from a local state dict; postprocess off to avoid its download."""
    model = VGG(make_layers(), postprocess=False)
    state = _load_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InvalidWeightsError(f"{path} is not a VGGish state dict: {str(err)[:300]}") from err
    return model.eval().requires_grad_(False)


def _load_pca(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA eigenvectors (128, 128) and means (128, 1) as float32, as torchvggish's Postprocessor keeps them."""
    state = _load_state_dict(path)
    try:
        matrix = torch.as_tensor(state[vggish_params.PCA_EIGEN_VECTORS_NAME]).float()
        means = torch.as_tensor(state[vggish_params.PCA_MEANS_NAME]).float().reshape(-1, 1)
    except KeyError as err:
        raise InvalidWeightsError(f"{path} lacks key {err}; expected pca_eigen_vectors and pca_means") from err
    if matrix.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or means.shape != (EMBEDDING_DIM, 1):
        raise InvalidWeightsError(
            f"{path}: PCA shapes {tuple(matrix.shape)} and {tuple(means.shape)}, expected (128, 128) and (128,)"
        )
    return matrix, means


def postprocess(embeddings: torch.Tensor, pca_matrix: torch.Tensor, pca_means: torch.Tensor) -> torch.Tensor:
    """PCA (with whitening), clamp to [-2, 2] and 8-bit quantise to 0..255, as torchvggish's Postprocessor."""
    lo, hi = vggish_params.QUANTIZE_MIN_VAL, vggish_params.QUANTIZE_MAX_VAL
    pca_applied = torch.mm(pca_matrix, embeddings.float().t() - pca_means).t()
    clipped = torch.clamp(pca_applied, lo, hi)
    # No squeeze (torchvggish squeezes, which turns a single example into a 1-D vector).
    return torch.round((clipped - lo) * (255.0 / (hi - lo)))


# --------------------------------------------------------------------------- encoder


def _chunk_sizes(n: int, batch_size: int) -> list[int]:
    """Full batches, with a remainder of up to half a batch folded into the last one.

    oneDNN's throughput falls steeply for small batches (measured on 2 cores, channels_last fp32:
    batch 8: 64, 32: 87, 64: 209, 96: 216 GFLOP/s), so a tail of a few examples is not run alone.
    """
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    if rest and sizes and rest <= batch_size // 2:
        sizes[-1] += rest
    elif rest:
        sizes.append(rest)
    return sizes


class VGGishEncoder:
    """Frozen VGGish: 16 kHz mono waveforms -> per-0.96 s 128-d vectors."""

    name = "vggish"
    dim = EMBEDDING_DIM

    def __init__(
        self, *, weights_dir: str | None, postprocess: bool = True, device: str = "cpu", batch_size: int = 64,
        precision: str = "fp32",
    ) -> None:
        names = (VGGISH_WEIGHTS, VGGISH_PCA) if postprocess else (VGGISH_WEIGHTS,)
        paths = _find_files(weights_dir, names)
        self.postprocess = postprocess
        self.device = resolve_device(device)
        self.batch_size = batch_size
        # Utterances decoded per extraction batch: ~4 examples each, so several full CNN batches per call.
        self.utterances_per_batch = max(16, batch_size)
        # auto: fp16 autocast on CUDA; on CPU bf16 where it is native (AVX-512 BF16 / AMX: 1.7x fp32), else fp32.
        self._autocast = autocast_dtype(precision, self.device)
        self._sha256 = {p.name: _sha256(p) for p in paths}
        for p in paths:
            _check_hash_prefix(p, self._sha256[p.name])
        # channels_last is faster on CPU (oneDNN: 157 vs 114 GFLOP/s measured); on CUDA fp16 autocast is used.
        self._memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self._model: nn.Module = _load_vgg(paths[0]).to(self.device, memory_format=self._memory_format)
        store_matmul_weights_in(self._model, self._autocast)
        self._pca: tuple[torch.Tensor, torch.Tensor] | None = None
        if postprocess:
            matrix, means = _load_pca(paths[1])
            self._pca = (matrix.to(self.device), means.to(self.device))
        log.info("VGGish loaded from %s (postprocess=%s, device=%s)", paths[0].parent, postprocess, self.device)

    def identity(self) -> dict:
        """Cache key: encoder name, postprocess flag and sha256 prefixes of the weight files in use (pca is None without postprocess)."""
        return {
            "encoder": self.name,
            "postprocess": self.postprocess,
            "weights_sha256": self._sha256[VGGISH_WEIGHTS][:16],
            "pca_sha256": self._sha256[VGGISH_PCA][:16] if self.postprocess else None,
            "precision": precision_name(self._autocast),
        }

    def _embed(self, examples: torch.Tensor) -> torch.Tensor:
        """Run the CNN over (n, 1, 96, 64) examples in chunks of batch_size; float32 (n, 128) out."""
        outputs = []
        for chunk in examples.split(_chunk_sizes(examples.shape[0], self.batch_size)):
            chunk = chunk.contiguous(memory_format=self._memory_format)
            with autocast(self.device, self._autocast):
                emb = self._model(chunk)
            # PCA and quantisation stay in float32, outside autocast, so rounding is not done in fp16/bf16.
            emb = emb.float()
            outputs.append(postprocess(emb, *self._pca) if self._pca is not None else emb)
        return torch.cat(outputs)

    def encode(self, waveforms: list[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """Return, per waveform (float32 mono at 16 kHz), an (n_examples, 128) float32 array of per-0.96 s embeddings."""
        if not waveforms:
            return []
        with torch.inference_mode():
            per_utt = [log_mel_examples(as_device_tensor(w, self.device)) for w in waveforms]
            counts = [e.shape[0] for e in per_utt]
            # All examples of the call are batched together, whatever utterance they come from.
            embeddings = self._embed(torch.cat(per_utt))
            return [e.cpu().numpy() for e in embeddings.split(counts)]
