"""Device and precision choices shared by the encoders."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available; use device: auto or cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`: auto = fp16 on CUDA, none (fp32) on CPU."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    raise ValueError(f"unknown precision {precision!r}; allowed: auto, fp32, bf16")


def precision_name(dtype: torch.dtype | None) -> str:
    """fp32 / fp16 / bf16: part of an encoder's identity, so results of different precisions never mix in the cache."""
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast on the device when dtype is set, else nothing."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def as_device_tensor(wave: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 waveform on `device`; a pinned CPU tensor (DataLoader pin_memory) is copied asynchronously."""
    if not isinstance(wave, torch.Tensor):
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return wave.to(device=device, dtype=torch.float32, non_blocking=True)
