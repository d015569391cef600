"""The feature matrices training reads: pooled (or padded) text and audio vectors per utterance, and labels."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mmser.data.records import check_ids, read_table
from mmser.errors import UserError
from mmser.embeddings import audio_inputs, load_embeddings

log = logging.getLogger(__name__)

USES = {"text": ("text",), "audio": ("audio",), "fusion": ("text", "audio")}


class Features:
    """Pooled text and audio vectors for every utterance, addressable by id, plus integer labels and speakers."""

    def __init__(self, ids: list[str], labels: list[str], classes: list[str], text: np.ndarray | None,
                 audio: np.ndarray | None, audio_lengths: np.ndarray | None = None,
                 speakers: list[str] | None = None):
        self.ids = list(ids)
        self.index = {utt: i for i, utt in enumerate(self.ids)}
        self.y = np.array([classes.index(label) for label in labels], dtype=np.int64)
        self.text, self.audio = text, audio
        self.speakers = list(speakers) if speakers is not None else [""] * len(self.ids)
        # Padded (N, T, D) audio frames come with their lengths; pooled (N, D) audio counts as one frame each.
        self.audio_lengths = audio_lengths if audio_lengths is not None else np.ones(len(ids), dtype=np.int64)

    def batch(self, rows: np.ndarray, modality: str) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(text, audio, audio_lengths) tensors of `rows` for `modality`; an unused modality is None."""
        text = torch.from_numpy(self.text[rows]) if "text" in USES[modality] else None
        audio = torch.from_numpy(self.audio[rows]) if "audio" in USES[modality] else None
        return text, audio, torch.from_numpy(self.audio_lengths[rows])

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row numbers of `ids` (all must be in the prepared table)."""
        check_ids(ids, self.index, wanted_from="the split", present_in="the prepared table")
        return np.array([self.index[u] for u in ids], dtype=np.int64)

    def pooled(self, rows: np.ndarray, modality: str) -> np.ndarray:
        """One flat vector per row for `modality` (text then audio; padded frames mean-pooled): for baselines."""
        parts = []
        if "text" in USES[modality]:
            parts.append(self.text[rows])
        if "audio" in USES[modality]:
            audio = self.audio[rows]
            if audio.ndim == 3:  # padded frames (attention pooling): mean over each utterance's real frames
                lengths = self.audio_lengths[rows]
                audio = audio.sum(axis=1) / lengths[:, None]
            parts.append(audio)
        return np.concatenate(parts, axis=1)


def speaker_standardize(values: np.ndarray, speakers: list[str], lengths: np.ndarray | None = None) -> np.ndarray:
    """z-score each speaker's vectors (or real frames) with that speaker's own mean and std; labels are not used."""
    out = values.astype(np.float32, copy=True)
    speakers = np.asarray(speakers)
    for speaker in np.unique(speakers):
        rows = np.flatnonzero(speakers == speaker)
        if out.ndim == 3:
            frames = np.concatenate([out[r, :lengths[r]] for r in rows])
        else:
            frames = out[rows]
        mean, std = frames.mean(axis=0), frames.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)
        if out.ndim == 3:
            for r in rows:
                out[r, :lengths[r]] = (out[r, :lengths[r]] - mean) / std
        else:
            out[rows] = (out[rows] - mean) / std
    return out


def _aligned(path: str, ids: list[str], how: str) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """Embeddings of `path` in the order of `ids`: pooled, or padded frames with their lengths when the pooling is
    learned (attention). None when the file holds no utterance (a corpus without that modality)."""
    emb_ids, frames, identity = load_embeddings(path)
    if not emb_ids:
        return None, None, identity
    index = {u: i for i, u in enumerate(emb_ids)}
    check_ids(ids, index, wanted_from="the prepared table", present_in=path)
    values, lengths = audio_inputs([frames[index[u]] for u in ids], how)
    return values, lengths, identity


def load_features(table_path: str, *, classes: list[str], audio_pooling: str, text_path: str | None = None,
                  audio_path: str | None = None, speaker_norm: bool = False) -> tuple[Features, dict]:
    """Features for every utterance of the table from the embedding files given, and the encoders' identities.

    A modality whose file holds no utterance is left out (None). `speaker_norm` z-scores each speaker's inputs
    with that speaker's statistics (transductive for test speakers).
    """
    table = read_table(table_path)
    ids = table["id"].tolist()
    speakers = table["speaker"].tolist() if "speaker" in table else None
    text = audio = lengths = None
    encoders: dict = {}
    if text_path is not None:
        text, _, encoders["text"] = _aligned(text_path, ids, "mean")  # one vector per utterance: a no-op pooling
    if audio_path is not None:
        audio, lengths, encoders["audio"] = _aligned(audio_path, ids, audio_pooling)
    if speaker_norm:
        if speakers is None:
            raise UserError("train.speaker_norm needs a speaker column in the prepared table")
        text = speaker_standardize(text, speakers) if text is not None else None
        audio = speaker_standardize(audio, speakers, lengths) if audio is not None else None
    return Features(ids, table["label"].tolist(), classes, text, audio, audio_lengths=lengths,
                    speakers=speakers), encoders


def missing_modality(features: Features, modality: str) -> str | None:
    """Why `modality` cannot be trained on these features (None when it can)."""
    absent = [m for m in USES[modality] if getattr(features, m) is None]
    if absent:
        return f"the corpus has no {' and no '.join(absent)} input ({', '.join(absent)} embeddings hold no utterance)"
    return None
