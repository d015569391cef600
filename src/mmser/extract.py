"""Embedding extraction over the prepared utterance table: text and audio, batched and streamed."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmser.data.audio import load_audio

log = logging.getLogger(__name__)


class _Waveforms(Dataset):
    """Decodes one file per item, so decoding and resampling run in DataLoader workers."""

    def __init__(self, paths: list[str], sample_rate: int):
        self.paths, self.sample_rate = paths, sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return load_audio(self.paths[i], self.sample_rate)


def build_audio_encoder(*, encoder: str, sample_rate: int, vggish_weights_dir: str | None, postprocess: bool,
                        batch_size: int, device: str):
    """The configured audio encoder (egemaps or vggish); weights are checked before any audio is read."""
    if encoder == "egemaps":
        from mmser.encoders.egemaps import EGeMAPSEncoder

        return EGeMAPSEncoder(sample_rate=sample_rate)
    if encoder == "vggish":
        from mmser.encoders.vggish import VGGishEncoder

        return VGGishEncoder(weights_dir=vggish_weights_dir, postprocess=postprocess, device=device,
                             batch_size=batch_size)
    raise ValueError(f"unknown extract_audio.encoder {encoder!r}; allowed: egemaps, vggish")


def encode_audio(paths: list[str], encoder, *, sample_rate: int, utterances_per_batch: int = 16,
                 workers: int = 1) -> list[np.ndarray]:
    """Per-utterance (n_frames, dim) arrays; memory holds one batch of waveforms at a time."""
    loader = DataLoader(_Waveforms(paths, sample_rate), batch_size=utterances_per_batch, shuffle=False,
                        num_workers=workers, collate_fn=list, persistent_workers=False)
    out: list[np.ndarray] = []
    with torch.inference_mode(), tqdm(total=len(paths), desc=f"extract_audio ({encoder.name})", unit="utt") as bar:
        for waves in loader:
            out.extend(encoder.encode(waves))
            bar.update(len(waves))
    return out
