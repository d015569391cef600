"""Embedding extraction over the prepared utterance table: text and audio, batched, streamed and cached.

Only what the cache lacks is computed. Work is ordered by length (length-bucketed batches, little
padding), each batch is committed to the cache before the next starts (an interrupted run resumes
where it stopped), and audio is decoded in DataLoader workers while the encoder runs, one batch of
waveforms in memory at a time.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmser.cache import CacheStats, EmbeddingCache, entry_key, fetch_or_compute, file_hash, text_hash
from mmser.data.audio import load_audio

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
                        precision: str = "auto", ssl_model: str | None = None, ssl_layer: str | int = "last"):
    """The configured audio encoder (egemaps, vggish or ssl); weights are checked before any audio is read."""
    if encoder == "egemaps":
        from mmser.encoders.egemaps import EGeMAPSEncoder

        return EGeMAPSEncoder(sample_rate=sample_rate)
    if encoder == "vggish":
        from mmser.encoders.vggish import VGGishEncoder

        return VGGishEncoder(weights_dir=vggish_weights_dir, postprocess=postprocess, device=device,
                             batch_size=batch_size, precision=precision)
    if encoder == "ssl":
        from mmser.encoders.ssl import SSLEncoder

        if not ssl_model:
            raise ValueError("extract_audio.ssl_model must name a model (Hugging Face id or local directory)")
        return SSLEncoder(model=ssl_model, layer=ssl_layer, device=device, batch_size=batch_size,
                          precision=precision, sample_rate=sample_rate)
    raise ValueError(f"unknown extract_audio.encoder {encoder!r}; allowed: egemaps, vggish, ssl")


def extract_texts(texts: list[str], encoder, cache: EmbeddingCache) -> tuple[list[np.ndarray], CacheStats]:
    """A (1, dim) array per text; only texts absent from the cache are encoded, shortest first, batch by batch."""
    identity = encoder.identity()
    keys = [entry_key(identity, text_hash(t)) for t in texts]
    text_of = dict(zip(keys, texts))

    def compute(missing: list[str]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        order = sorted(missing, key=lambda k: len(text_of[k]))  # length buckets: little padding per batch
        chunks = [order[i:i + encoder.batch_size] for i in range(0, len(order), encoder.batch_size)]
        for chunk in tqdm(chunks, desc="extract_text", unit="batch"):
            vectors = encoder.encode([text_of[k] for k in chunk], progress=False)
            yield chunk, [v[None, :] for v in vectors]

    return fetch_or_compute(cache, keys, compute)


def extract_audio(paths: list[str], encoder, cache: EmbeddingCache, *, sample_rate: int, workers: int = 1,
                  utterances_per_batch: int | None = None) -> tuple[list[np.ndarray], CacheStats]:
    """Per-utterance (n_frames, dim) arrays; only files absent from the cache are decoded and encoded.

    Files are addressed by the hash of their bytes; the missing ones are decoded in `workers`
    DataLoader processes (0 = in this process), longest first so that batches hold similar lengths.
    """
    identity = {**encoder.identity(), "sample_rate": sample_rate}
    keys = [entry_key(identity, file_hash(p)) for p in paths]
    path_of = dict(zip(keys, paths))
    per_batch = utterances_per_batch or getattr(encoder, "utterances_per_batch", UTTERANCES_PER_BATCH)
    device = getattr(encoder, "device", torch.device("cpu"))

    def compute(missing: list[str]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        order = sorted(missing, key=lambda k: os.path.getsize(path_of[k]), reverse=True)
        loader = DataLoader(_Waveforms([path_of[k] for k in order], sample_rate), batch_size=per_batch,
                            shuffle=False, num_workers=workers, collate_fn=list,
                            pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
        done = 0
        with tqdm(total=len(order), desc=f"extract_audio ({encoder.name})", unit="utt") as bar:
            for waves in loader:
                batch = order[done:done + len(waves)]
                done += len(waves)
                yield batch, encoder.encode(waves)
                bar.update(len(waves))

    return fetch_or_compute(cache, keys, compute)
