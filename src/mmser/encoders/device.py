"""Device and precision choices shared by the encoders."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

T, R = TypeVar("T"), TypeVar("R")

# Set to 1 to treat this CPU as one without native bf16 (`precision: auto` then stays fp32), e.g. to check that
# results reproduce on such a machine.
NO_NATIVE_BF16_ENV = "MMSER_NO_NATIVE_BF16"


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available; use device: auto or cpu")
    return torch.device(device)


def native_bf16_cpu() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX): bf16 autocast beats fp32 there.

    Elsewhere bf16 is emulated and slower, so `auto` keeps fp32 there. $MMSER_NO_NATIVE_BF16=1 answers False.
    """
    if os.environ.get(NO_NATIVE_BF16_ENV, "").strip() not in ("", "0"):
        return False
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch, or a CPU it cannot describe
        return False
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def autocast_dtype(precision: str, device: torch.device, *, bf16_on_cpu: bool = True) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`.

    auto = fp16 on CUDA; on CPU bf16 where the CPU has native bf16 and the encoder's tolerance against fp32 is
    measured (`bf16_on_cpu`: text and VGGish, cosine >= 0.999), else fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and bf16_on_cpu and native_bf16_cpu():
            return torch.bfloat16
        return None
    raise ValueError(f"unknown precision {precision!r}; allowed: auto, fp32, bf16")


def store_matmul_weights_in(model: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Store the weights and biases of `model`'s Linear and Conv layers in the autocast dtype, once.

    Autocast rounds them to that dtype on every forward anyway, but caches the result only for weights that
    require grad: a frozen encoder's were rounded again for every batch (11 % of VGGish's bf16 time on CPU).
    Rounded once, they give bitwise the same embeddings. Other layers (embeddings, norms) keep their dtype, so
    autocast still decides what runs in fp32. Only for models that always run under autocast.
    """
    if dtype is None:
        return
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            module.to(dtype)


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


def map_on_cores(fn: Callable[[T], R], items: list[T], device: torch.device) -> list[R]:
    """[fn(x) for x in items]; on CPU, each item in a worker of one intra-op thread, as many workers as threads.

    Small batches (a few hundred tokens) scale poorly over intra-op threads, which meet at a barrier
    after every op; separate batches on separate cores never wait for each other (2 cores, MiniLM,
    512 texts in 256-token batches: 1.48 s with both threads on each batch, 1.11 s one batch per core).
    One thread per item also makes each result independent of the thread count, which differs between
    one process and DDP ranks (Lightning gives each rank its share of the cores): sharded extraction
    equals one process bitwise. fn runs in worker threads: per-thread modes (inference_mode, autocast)
    must be entered inside it. torch's thread count (and MKL's, lowered by a worker) is restored.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:  # one thread already: in this thread, as a worker would
        return [fn(x) for x in items]
    try:
        with ThreadPoolExecutor(max(1, min(threads, len(items))), initializer=torch.set_num_threads,
                                initargs=(1,)) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)
