"""Evaluation protocols: leave-one-session-out, leave-one-speaker-out, the paper's random 80/20, speaker k-fold."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, train_test_split

log = logging.getLogger(__name__)


def _carve_validation(train_ids: pd.Series, labels: pd.Series, *, fraction: float, seed: int) -> tuple[list, list]:
    """Split training ids into (train, val), stratified by label when every class has two or more examples."""
    stratify = labels if labels.value_counts().min() >= 2 else None
    try:
        train, val = train_test_split(train_ids, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # too few examples per class for the stratified val size
        train, val = train_test_split(train_ids, test_size=fraction, random_state=seed)
    return sorted(train), sorted(val)


def _fold(name: str, held_out: str, table: pd.DataFrame, test_mask: np.ndarray, *, val_fraction: float,
          seed: int) -> dict:
    """One fold: test is `test_mask`; validation comes from the rest, never from test."""
    rest = table[~test_mask]
    train, val = _carve_validation(rest["id"], rest["label"], fraction=val_fraction, seed=seed)
    return {"name": name, "held_out": held_out, "train": train, "val": val,
            "test": sorted(table.loc[test_mask, "id"])}


def make_folds(table: pd.DataFrame, *, protocol: str, seed: int, test_fraction: float, val_fraction: float,
               folds: int) -> list[dict]:
    """Folds for `protocol` over the prepared utterance table (columns id, label, speaker, session)."""
    if protocol == "loso":
        sessions = sorted(s for s in table["session"].unique() if s)
        if len(sessions) < 2 or (table["session"] == "").any():
            raise ValueError("split.protocol loso needs a session for every utterance and >= 2 sessions; "
                             "use speaker_kfold for corpora without sessions")
        out = [_fold(f"fold{i + 1}", s, table, (table["session"] == s).to_numpy(), val_fraction=val_fraction,
                     seed=seed) for i, s in enumerate(sessions)]
    elif protocol == "lospo":
        # Leave one speaker out; validation is the other speaker of the held-out session (never seen in training).
        if (table["session"] == "").any():
            raise ValueError("split.protocol lospo needs sessions (validation is the held-out speaker's partner)")
        out = []
        for i, speaker in enumerate(sorted(table["speaker"].unique())):
            session = table.loc[table["speaker"] == speaker, "session"].iloc[0]
            partners = sorted(set(table.loc[table["session"] == session, "speaker"]) - {speaker})
            if not partners:
                raise ValueError(f"split.protocol lospo: session {session} has no second speaker for validation")
            test = table["speaker"] == speaker
            val = table["speaker"].isin(partners)
            out.append({"name": f"fold{i + 1}", "held_out": speaker, "train": sorted(table.loc[~test & ~val, "id"]),
                        "val": sorted(table.loc[val, "id"]), "test": sorted(table.loc[test, "id"])})
    elif protocol == "random":
        # The paper's split: utterance-level 80/20, here seeded.
        _, test = train_test_split(table["id"], test_size=test_fraction, random_state=seed)
        out = [_fold("fold1", "random", table, table["id"].isin(set(test)).to_numpy(), val_fraction=val_fraction,
                     seed=seed)]
    elif protocol == "speaker_kfold":
        speakers = table["speaker"].unique()
        if len(speakers) < folds:
            raise ValueError(f"split.folds = {folds} but the corpus has only {len(speakers)} speakers")
        kfold = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        out = []
        for i, (_, test_idx) in enumerate(kfold.split(table, groups=table["speaker"])):
            mask = np.zeros(len(table), dtype=bool)
            mask[test_idx] = True
            held = ",".join(sorted(table.loc[mask, "speaker"].unique()))
            out.append(_fold(f"fold{i + 1}", held, table, mask, val_fraction=val_fraction, seed=seed))
    else:
        raise ValueError(f"unknown split.protocol {protocol!r}; allowed: loso, lospo, random, speaker_kfold")
    for f in out:
        log.info("%s (held out %s): train %d, val %d, test %d", f["name"], f["held_out"], len(f["train"]),
                 len(f["val"]), len(f["test"]))
    return out
