"""One embedding file per encoder: utterance ids, per-utterance frame vectors, and the encoder's identity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def save_embeddings(path: str | Path, ids: list[str], vectors: list[np.ndarray], identity: dict) -> None:
    """Write ids and (n_frames_i, dim) arrays as one .npz (frames concatenated + offsets), atomically."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} embeddings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([v.shape[0] for v in vectors], dtype=np.int64)
    frames = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, identity.get("dim", 0)))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, ids=np.array(ids, dtype=str), frames=frames, offsets=np.concatenate([[0], np.cumsum(lengths)]),
             identity=np.array(json.dumps(identity, sort_keys=True)))
    os.replace(tmp, path)


def load_embeddings(path: str | Path) -> tuple[list[str], list[np.ndarray], dict]:
    """(ids, per-utterance frame arrays, encoder identity) from a file written by save_embeddings."""
    with np.load(path) as z:
        ids, frames, offsets = z["ids"].tolist(), z["frames"], z["offsets"]
        identity = json.loads(str(z["identity"]))
    return ids, [frames[offsets[i]:offsets[i + 1]] for i in range(len(ids))], identity


def pool(frames: list[np.ndarray], how: str) -> np.ndarray:
    """One vector per utterance from its frames: `sum` (the paper, over VGGish's 0.96 s examples), `mean`, or
    `mean_std` (mean and standard deviation concatenated). `attention` is learned: see pad_frames."""
    if how == "sum":
        return np.stack([f.sum(axis=0) for f in frames]).astype(np.float32)
    if how == "mean":
        return np.stack([f.mean(axis=0) for f in frames]).astype(np.float32)
    if how == "mean_std":
        return np.stack([np.concatenate([f.mean(axis=0), f.std(axis=0)]) for f in frames]).astype(np.float32)
    raise ValueError(f"unknown pooling {how!r}; allowed: sum, mean, mean_std (attention pools inside the model)")


def pad_frames(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, T_max, D) zero-padded frames and (N,) lengths, for pooling learned inside the model (attention)."""
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    padded = np.zeros((len(frames), int(lengths.max(initial=1)), frames[0].shape[1] if frames else 0), np.float32)
    for i, f in enumerate(frames):
        padded[i, :len(f)] = f
    return padded, lengths


def audio_inputs(frames: list[np.ndarray], how: str) -> tuple[np.ndarray, np.ndarray]:
    """What a head takes for `how`: pooled (N, D) vectors with unit lengths, or padded frames and their
    lengths for pooling learned inside the model (attention)."""
    if how == "attention":
        return pad_frames(frames)
    return pool(frames, how), np.ones(len(frames), dtype=np.int64)

