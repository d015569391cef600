"""GPU extraction check, for a machine with CUDA: `python bench/gpu_check.py` (about a minute).

On the same inputs it runs the text encoder (packaged all-MiniLM-L6-v2) and VGGish (random weights of
the real architecture) through the real extraction path with `device: auto` and `precision: auto`
(on CUDA: fp16 autocast, pinned memory, decoding in a DataLoader worker) and checks them against fp32
on the CPU:
- embeddings within the stated tolerance (per utterance cosine >= 0.999, relative error <= 2 %), and
  VGGish's 8-bit post-processed values within one level;
- the VGGish log-mel front end on the device against torchvggish's numpy reference (within 1e-4);
- on CUDA, the peak device memory that extraction adds stays within 10 % for 4x the files (it streams).
It also reports utterances/s and GFLOP/s against the device's matmul peak in the precision used. The
last line is one JSON object. Exit status: 0 all checks pass, 1 a check fails, 2 no GPU. `--device cpu`
runs the same checks on the CPU (what `auto` gives there): that is how the script is tested on machines
without a GPU. Then run the CUDA-only tests too: `pytest -q tests -k cuda`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import (ROOT, VGGISH_GFLOP_PER_EXAMPLE, SR, closeness, machine, matmul_peak,  # noqa: E402
                     random_vggish, sentences, synchronize, write_corpus)

sys.path.insert(0, str(ROOT / "src"))
from mmser.cache import EmbeddingCache  # noqa: E402
from mmser.data.audio import load_audio  # noqa: E402
from mmser.encoders.text import TextEncoder  # noqa: E402
from mmser.encoders.vggish import VGGishEncoder, log_mel_examples  # noqa: E402
from mmser.extract import extract_audio, extract_texts  # noqa: E402

MIN_COSINE, MAX_REL_ERROR = 0.999, 0.02  # the README's stated tolerance against fp32
log = logging.getLogger("gpu_check")


def check_text(device: str, texts: list[str], tmp: Path) -> dict:
    """Text extraction on `device` in `auto` precision against the CPU in fp32: tolerance and speed."""
    make = partial(TextEncoder, model="all-MiniLM-L6-v2", pooling="mean", max_length=128)
    reference, encoder = make(device="cpu", precision="fp32"), make(device=device, precision="auto")
    reference.encode(texts[:64], progress=False)  # warm-up, as for the encoder under test
    start = time.perf_counter()
    expected = reference.encode(texts, progress=False)
    cpu_s = time.perf_counter() - start
    encoder.encode(texts[:64], progress=False)  # warm-up (kernels, autotuning)
    with EmbeddingCache(tmp / "text.sqlite") as cache:
        synchronize(encoder.device)
        start = time.perf_counter()
        got, _ = extract_texts(texts, encoder, cache)
        synchronize(encoder.device)
        seconds = time.perf_counter() - start
    cosine, rel = closeness(expected, np.concatenate(got))
    return {"text_device": str(encoder.device), "text_precision": encoder.identity()["precision"],
            "text_utt_per_s": round(len(texts) / seconds, 1), "text_cpu_fp32_utt_per_s": round(len(texts) / cpu_s, 1),
            "text_min_cosine": round(cosine, 6), "text_rel_error": round(rel, 5),
            "text_ok": cosine >= MIN_COSINE and rel <= MAX_REL_ERROR}


def extract_timed(paths: list[str], encoder: VGGishEncoder, cache_path: Path) -> tuple[list, float, int | None]:
    """extract_audio as the stage runs it (one decoding worker): vectors, seconds, and on CUDA the peak device
    bytes it allocated beyond what was allocated before (the model)."""
    before = 0
    if encoder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(encoder.device)
        before = torch.cuda.memory_allocated(encoder.device)
    with EmbeddingCache(cache_path) as cache:
        synchronize(encoder.device)
        start = time.perf_counter()
        vectors, _ = extract_audio(paths, encoder, cache, sample_rate=SR, workers=1)
        synchronize(encoder.device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(encoder.device) - before if encoder.device.type == "cuda" else None
    return vectors, seconds, peak


def write_same_length(directory: Path, n: int, seconds: float = 5.0) -> list[str]:
    """n noise WAV files of one length."""
    directory.mkdir()
    rng = np.random.default_rng(2)
    paths = [str(directory / f"same{i:03d}.wav") for i in range(n)]
    for path in paths:
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR, subtype="PCM_16")
    return paths


def check_vggish(device: str, paths: list[str], weights: Path, tmp: Path) -> dict:
    """VGGish on `device` in `auto` precision against the CPU in fp32: tolerance, front end, memory, speed."""
    from torchvggish.vggish_input import waveform_to_examples

    make = partial(VGGishEncoder, weights_dir=str(weights), batch_size=64)
    waves = [load_audio(p, SR) for p in paths[:24]]
    raw = make(device=device, precision="auto", postprocess=False)
    reference = make(device="cpu", precision="fp32", postprocess=False)
    cosine, rel = closeness(np.concatenate(reference.encode(waves)), np.concatenate(raw.encode(waves)))
    front = max(float(np.abs(log_mel_examples(torch.from_numpy(w).to(raw.device)).cpu().numpy()
                             - waveform_to_examples(w, SR).detach().numpy()).max()) for w in waves[:4])

    encoder = make(device=device, precision="auto", postprocess=True)
    encoder.encode(waves[:8])  # warm-up
    vectors, seconds, _ = extract_timed(paths, encoder, tmp / "audio.sqlite")
    # Streaming: files of one length in batches of 16, so 16 and 64 files make the same batches, 1 and 4 of them.
    same = write_same_length(tmp / "same", 64)
    small = make(device=device, precision="auto", postprocess=True, batch_size=16)
    _, _, peak_small = extract_timed(same[:16], small, tmp / "same-16.sqlite")
    _, _, peak_large = extract_timed(same, small, tmp / "same-64.sqlite")
    expected = make(device="cpu", precision="fp32", postprocess=True).encode(waves)
    agree = float(np.mean(np.abs(np.concatenate(expected) - np.concatenate(vectors[:24])) <= 1))

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(encoder.identity()["precision"], torch.float32)
    peak_gflops = matmul_peak(dtype, str(encoder.device))
    gflops = sum(v.shape[0] for v in vectors) * VGGISH_GFLOP_PER_EXAMPLE / seconds  # one row per example
    memory_ok = peak_large is None or peak_large <= 1.1 * peak_small + 2 ** 20
    return {"vggish_device": str(encoder.device), "vggish_precision": encoder.identity()["precision"],
            "vggish_utt_per_s": round(len(paths) / seconds, 1), "vggish_gflops": round(gflops, 1),
            "matmul_peak_gflops": round(peak_gflops, 1), "vggish_fraction_of_peak": round(gflops / peak_gflops, 3),
            "vggish_min_cosine": round(cosine, 6), "vggish_rel_error": round(rel, 5),
            "vggish_quantised_agree_within_1": round(agree, 4), "front_end_max_abs_diff": front,
            "peak_device_bytes_16_files": peak_small, "peak_device_bytes_64_files": peak_large,
            "vggish_ok": cosine >= MIN_COSINE and rel <= MAX_REL_ERROR and agree == 1.0,
            "front_end_ok": front <= 1e-4, "memory_ok": memory_ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the same checks on the CPU)")
    parser.add_argument("--quick", action="store_true", help="16 files and 128 texts (a smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mmser").setLevel(logging.ERROR)  # random weights: the release-hash warning is expected
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run this on a GPU machine, or pass --device cpu", file=sys.stderr)
        return 2
    device = "auto" if args.device.startswith("cuda") else args.device  # auto: what the pipeline's default picks
    result: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "wav").mkdir()
        paths = write_corpus(tmp / "wav", 16 if args.quick else 64)
        result.update(check_vggish(device, paths, random_vggish(tmp), tmp))
        log.info("VGGish on %s (%s): %s utt/s, %.0f%% of peak", result["vggish_device"], result["vggish_precision"],
                 result["vggish_utt_per_s"], 100 * result["vggish_fraction_of_peak"])
        result.update(check_text(device, sentences(128 if args.quick else 512), tmp))
        log.info("text on %s (%s): %s utt/s (CPU fp32: %s)", result["text_device"], result["text_precision"],
                 result["text_utt_per_s"], result["text_cpu_fp32_utt_per_s"])
    checks = {k: v for k, v in result.items() if k.endswith("_ok")}
    result["all_ok"] = all(checks.values())
    print(json.dumps(result))
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
