"""Load the prepared table and cached embeddings into the pooled feature matrices training reads."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmser.embeddings import audio_inputs, load_embeddings
from mmser.training import Features


def _aligned(path: str, ids: list[str], how: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Embeddings of `path` in the order of `ids` (every id must be present): pooled, or padded frames with
    their lengths when the pooling is learned (attention)."""
    emb_ids, frames, identity = load_embeddings(path)
    index = {u: i for i, u in enumerate(emb_ids)}
    missing = [u for u in ids if u not in index]
    if missing:
        raise KeyError(f"{path}: {len(missing)} utterances have no embedding (e.g. {missing[0]}); rerun extraction")
    values, lengths = audio_inputs([frames[index[u]] for u in ids], how)
    return values, lengths, identity


def load_features(table_path: str, text_path: str, audio_path: str, *, classes: list[str],
                  audio_pooling: str) -> tuple[Features, dict]:
    """Features for every utterance of the table, and the encoders' identities."""
    table = pd.read_csv(table_path, keep_default_na=False)
    ids = table["id"].tolist()
    text, _, text_id = _aligned(text_path, ids, "mean")  # one vector per utterance: pooling is a no-op
    audio, lengths, audio_id = _aligned(audio_path, ids, audio_pooling)
    features = Features(ids, table["label"].tolist(), classes, text, audio, audio_lengths=lengths)
    return features, {"text": text_id, "audio": audio_id}
