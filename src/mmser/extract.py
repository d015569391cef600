"""Embedding extraction over the prepared utterance table: text and audio, batched, streamed and cached.

Only what the cache lacks is computed. Work is ordered by length (length-bucketed batches, little
padding), each batch is committed to the cache before the next starts (an interrupted run resumes
where it stopped), and audio is decoded in DataLoader workers while the encoder runs, one batch of
waveforms in memory at a time.

With a `Sharding` (distributed.strategy ddp / ddp_spawn) the same batches are spread over Lightning's
processes, whole, and merged back in order (mmser.sharded); launch rank 0 alone reads and writes the
cache. One process and many give bitwise the same embeddings.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmser.cache import CacheStats, EmbeddingCache, entry_key, fetch_or_compute, file_hash, text_hash
from mmser.data.audio import load_audio
from mmser.params import ParamsError
from mmser.encoders.identity import embedding_identity

if TYPE_CHECKING:
    from mmser.params import DistributedParams
    from mmser.sharded import Job, Sharding

log = logging.getLogger(__name__)

UTTERANCES_PER_BATCH = 16  # audio files decoded per batch (VGGish regroups their examples by its batch_size)


class _Waveforms(Dataset):
    """Decodes one file per item, so decoding and resampling run in DataLoader workers."""

    def __init__(self, paths: list[str], sample_rate: int):
        self.paths, self.sample_rate = paths, sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_audio(self.paths[i], self.sample_rate))


def build_audio_encoder(*, encoder: str, sample_rate: int, vggish_weights_dir: str | None = None,
                        postprocess: bool = True, batch_size: int = 64, device: str = "auto",
                        precision: str = "fp32", ssl_model: str | None = None, ssl_layer: str | int = "last",
                        whisper_model: str = "packaged", whisper_pooling: str = "mean",
                        whisper_compute_type: str = "float32", egemaps_processes: int | None = None):
    """The configured audio encoder (egemaps, vggish, ssl or whisper); weights are checked before any audio is read.

    `egemaps_processes`: openSMILE worker processes (None: every usable core; 1 under DDP, where the ranks
    already share the clips and a process pool forked from a rank can hang).
    """
    if encoder == "egemaps":
        from mmser.encoders.egemaps import EGeMAPSEncoder

        return EGeMAPSEncoder(sample_rate=sample_rate, processes=egemaps_processes)
    if encoder == "vggish":
        from mmser.encoders.vggish import VGGishEncoder

        return VGGishEncoder(weights_dir=vggish_weights_dir, postprocess=postprocess, device=device,
                             batch_size=batch_size, precision=precision)
    if encoder == "ssl":
        from mmser.encoders.ssl import SSLEncoder

        if not ssl_model:
            raise ParamsError("extract_audio.ssl_model must name a model (Hugging Face id or local directory)")
        return SSLEncoder(model=ssl_model, layer=ssl_layer, device=device, batch_size=batch_size,
                          precision=precision, sample_rate=sample_rate)
    if encoder == "whisper":
        from mmser.encoders.whisper import WhisperEncoder

        return WhisperEncoder(model=whisper_model, pooling=whisper_pooling, compute_type=whisper_compute_type,
                              device=device, batch_size=batch_size)
    raise ParamsError(f"unknown extract_audio.encoder {encoder!r}; allowed: egemaps, vggish, ssl, whisper")


def sharding_for(distributed: "DistributedParams", make_encoder, *, scratch: Path) -> "Sharding | None":
    """None for `strategy: single` (one process, no Lightning); else how to shard over Lightning's processes.

    `make_encoder(device=...)` builds the encoder in processes that ddp_spawn starts; the ranks' batch
    files go to a temporary folder under `scratch`, which every rank (every node) must see.
    """
    if distributed.strategy == "single":
        return None
    from mmser.sharded import Sharding

    return Sharding(distributed, make_encoder, scratch=Path(scratch))


def _encode_texts(encoder, texts: list[str]) -> list[np.ndarray]:
    """One (1, dim) row per text, from one batch call."""
    return [v[None, :] for v in encoder.encode(texts, progress=False)]


def _encode_waves(encoder, waves: list[torch.Tensor]) -> list[np.ndarray]:
    """One (n_frames, dim) array per waveform, from one batch call."""
    return encoder.encode(waves)


def _text_job() -> "Job":
    from mmser.sharded import Job

    return Job(make_dataset=list, encode=_encode_texts)


def _audio_job(sample_rate: int, workers: int) -> "Job":
    from mmser.sharded import Job

    return Job(make_dataset=partial(_Waveforms, sample_rate=sample_rate), encode=_encode_waves, workers=workers)


def _sharded(chunks: list[list[str]], input_of: dict[str, str], encoder, job: "Job",
             sharding: "Sharding") -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """The batches `chunks` (keys) computed across ranks, yielded in their order as (keys, arrays)."""
    from mmser.sharded import run_batches

    inputs = [input_of[k] for chunk in chunks for k in chunk]
    starts = np.cumsum([0] + [len(c) for c in chunks])
    batches = [list(range(starts[i], starts[i + 1])) for i in range(len(chunks))]
    for arrays, chunk in zip(run_batches(inputs, batches, encoder, job, sharding), chunks, strict=True):
        yield chunk, arrays


def _meet_ranks(encoder, job: "Job", sharding: "Sharding") -> None:
    """Nothing to compute: still start the other ranks' (empty) share, since they wait for rank 0's plan."""
    from mmser.sharded import run_batches

    for _ in run_batches([], [], encoder, job, sharding):
        pass


def extract_texts(texts: list[str], encoder, cache: EmbeddingCache, *,
                  sharding: "Sharding | None" = None) -> tuple[list[np.ndarray], CacheStats]:
    """A (1, dim) array per text; only texts absent from the cache are encoded, shortest first, batch by batch.

    With `sharding`, on launch rank 0: the same batches are encoded across the ranks (see mmser.sharded).
    """
    identity = embedding_identity(encoder)  # model, weights, pooling, precision, code, library versions
    keys = [entry_key(identity, text_hash(t)) for t in texts]
    text_of = dict(zip(keys, texts))

    def compute(missing: list[str]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        order = sorted(missing, key=lambda k: len(text_of[k]))  # length buckets: little padding per batch
        chunks = [order[i:i + encoder.batch_size] for i in range(0, len(order), encoder.batch_size)]
        if sharding is not None:
            yield from _sharded(chunks, text_of, encoder, _text_job(), sharding)
            return
        for chunk in tqdm(chunks, desc="extract_text", unit="batch"):
            yield chunk, _encode_texts(encoder, [text_of[k] for k in chunk])

    vectors, stats = fetch_or_compute(cache, keys, compute)
    if sharding is not None and not stats.misses:
        _meet_ranks(encoder, _text_job(), sharding)
    return vectors, stats


def extract_texts_share(encoder, sharding: "Sharding") -> None:
    """On a launch rank other than 0: encode this rank's share of the text batches that rank 0 hands out."""
    from mmser.sharded import serve_share

    serve_share(encoder, _text_job(), sharding)


def extract_audio(paths: list[str], encoder, cache: EmbeddingCache, *, sample_rate: int, workers: int = 1,
                  utterances_per_batch: int | None = None,
                  sharding: "Sharding | None" = None) -> tuple[list[np.ndarray], CacheStats]:
    """Per-utterance (n_frames, dim) arrays; only files absent from the cache are decoded and encoded.

    Files are addressed by the hash of their bytes; the missing ones are decoded in `workers`
    DataLoader processes (0 = in this process), longest first so that batches hold similar lengths.
    With `sharding`, on launch rank 0: the same batches are encoded across the ranks (see mmser.sharded).
    """
    identity = embedding_identity(encoder, sample_rate=sample_rate)  # with the decoding and resampling code
    keys = [entry_key(identity, file_hash(p)) for p in paths]
    path_of = dict(zip(keys, paths))
    per_batch = utterances_per_batch or getattr(encoder, "utterances_per_batch", UTTERANCES_PER_BATCH)
    device = getattr(encoder, "device", torch.device("cpu"))

    def compute(missing: list[str]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        order = sorted(missing, key=lambda k: os.path.getsize(path_of[k]), reverse=True)
        if sharding is not None:
            chunks = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]  # as the loader below
            yield from _sharded(chunks, path_of, encoder, _audio_job(sample_rate, workers), sharding)
            return
        loader = DataLoader(_Waveforms([path_of[k] for k in order], sample_rate), batch_size=per_batch,
                            shuffle=False, num_workers=workers, collate_fn=list,
                            pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
        done = 0
        with tqdm(total=len(order), desc=f"extract_audio ({encoder.name})", unit="utt") as bar:
            for waves in loader:
                batch = order[done:done + len(waves)]
                done += len(waves)
                yield batch, _encode_waves(encoder, waves)
                bar.update(len(waves))

    vectors, stats = fetch_or_compute(cache, keys, compute)
    if sharding is not None and not stats.misses:
        _meet_ranks(encoder, _audio_job(sample_rate, workers), sharding)
    return vectors, stats


def extract_audio_share(encoder, sharding: "Sharding", *, sample_rate: int, workers: int = 1) -> None:
    """On a launch rank other than 0: encode this rank's share of the audio batches that rank 0 hands out."""
    from mmser.sharded import serve_share

    serve_share(encoder, _audio_job(sample_rate, workers), sharding)
