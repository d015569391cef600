"""Load the prepared table and cached embeddings into the pooled feature matrices training reads."""

from __future__ import annotations

import numpy as np

from mmser.data.records import check_ids, read_table
from mmser.embeddings import audio_inputs, load_embeddings
from mmser.training import Features


def _aligned(path: str, ids: list[str], how: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Embeddings of `path` in the order of `ids` (every id must be present): pooled, or padded frames with
    their lengths when the pooling is learned (attention)."""
    emb_ids, frames, identity = load_embeddings(path)
    index = {u: i for i, u in enumerate(emb_ids)}
    check_ids(ids, index, wanted_from="the prepared table", present_in=path)
    values, lengths = audio_inputs([frames[index[u]] for u in ids], how)
    return values, lengths, identity


def load_features(table_path: str, text_path: str, audio_path: str, *, classes: list[str],
                  audio_pooling: str) -> tuple[Features, dict]:
    """Features for every utterance of the table, and the encoders' identities."""
    table = read_table(table_path)
    ids = table["id"].tolist()
    text, _, text_id = _aligned(text_path, ids, "mean")  # one vector per utterance: pooling is a no-op
    audio, lengths, audio_id = _aligned(audio_path, ids, audio_pooling)
    features = Features(ids, table["label"].tolist(), classes, text, audio, audio_lengths=lengths)
    return features, {"text": text_id, "audio": audio_id}
