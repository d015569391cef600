"""Evaluation protocols: leave-one-session-out, leave-one-speaker-out, the paper's random 80/20, speaker k-fold.

Every speaker-independent protocol (loso, lospo, speaker_kfold) validates on speakers that are neither trained
nor tested on, so each choice made on validation (checkpoint, head, weight decay, the baseline's C) is made on
unseen voices, as the test promises. `random` (the paper's) is utterance-level throughout, validation included.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, train_test_split

from mmser.errors import UserError

log = logging.getLogger(__name__)

# Speaker subsets tried when choosing validation speakers; the most class-balanced one is kept.
VAL_CANDIDATES = 256


class SplitError(UserError, ValueError):
    """The corpus cannot be split as the protocol asks (too few speakers or sessions, mixed sessions)."""


def _carve_utterances(train_ids: pd.Series, labels: pd.Series, *, fraction: float, seed: int) -> tuple[list, list]:
    """Split training ids into (train, val), stratified by label when every class has two or more examples."""
    stratify = labels if labels.value_counts().min() >= 2 else None
    try:
        train, val = train_test_split(train_ids, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # too few examples per class for the stratified val size
        train, val = train_test_split(train_ids, test_size=fraction, random_state=seed)
    return sorted(train), sorted(val)


def validation_speakers(rest: pd.DataFrame, *, fraction: float, seed: int, where: str) -> list[str]:
    """Speakers of the training part to validate on: round(fraction x speakers), at least 1, at least 1 left.

    Among seeded random subsets of that size, the one whose class distribution is closest (L1) to the training
    part's is kept, preferring subsets that leave every class present on both sides.
    """
    speakers = sorted(rest["speaker"].unique())
    if len(speakers) < 2:
        raise SplitError(f"split: {where} leaves {len(speakers)} training speaker(s); validation held out by "
                         "speaker needs >= 2 (use more speakers per fold, fewer folds, or split.protocol random)")
    n_val = min(max(1, round(fraction * len(speakers))), len(speakers) - 1)
    counts = pd.crosstab(rest["speaker"], rest["label"]).reindex(speakers)
    total = counts.sum(axis=0).to_numpy(float)
    target = total / total.sum()
    rng = np.random.default_rng(seed)
    best, best_score = None, None
    for _ in range(VAL_CANDIDATES):
        pick = np.zeros(len(speakers), dtype=bool)
        pick[rng.choice(len(speakers), n_val, replace=False)] = True
        val = counts.to_numpy(float)[pick].sum(axis=0)
        missing = int((val == 0).sum() + ((total - val) == 0).sum())
        score = (missing, float(np.abs(val / val.sum() - target).sum()))
        if best_score is None or score < best_score:
            best, best_score = pick, score
    return [s for s, p in zip(speakers, best) if p]


def _fold(name: str, held_out: str, table: pd.DataFrame, test_mask: np.ndarray, *, by_speaker: bool,
          val_fraction: float, val_speakers: float, seed: int) -> dict:
    """One fold: test is `test_mask`; validation comes from the rest (whole speakers when `by_speaker`)."""
    rest = table[~test_mask]
    fold = {"name": name, "held_out": held_out}
    if by_speaker:
        speakers = validation_speakers(rest, fraction=val_speakers, seed=seed, where=f"{name} (held out {held_out})")
        is_val = rest["speaker"].isin(speakers)
        fold.update(train=sorted(rest.loc[~is_val, "id"]), val=sorted(rest.loc[is_val, "id"]), val_speakers=speakers)
    else:
        train, val = _carve_utterances(rest["id"], rest["label"], fraction=val_fraction, seed=seed)
        fold.update(train=train, val=val)
    fold["test"] = sorted(table.loc[test_mask, "id"])
    return fold


def _check_sessions(table: pd.DataFrame, protocol: str) -> None:
    """Sessions present on every row, and no speaker in two sessions (that speaker would be trained and tested)."""
    if (table["session"] == "").any():
        raise SplitError(f"split.protocol {protocol} needs a session for every utterance; use speaker_kfold for "
                         "corpora without sessions")
    spread = table.groupby("speaker")["session"].nunique()
    if (spread > 1).any():
        speaker = spread[spread > 1].index[0]
        sessions = sorted(table.loc[table["speaker"] == speaker, "session"].unique())
        raise SplitError(f"split.protocol {protocol}: speaker {speaker} appears in sessions {', '.join(sessions)}, "
                         "so a held-out session would share a voice with training; use speaker_kfold")


def protocol_folds(table: pd.DataFrame, *, protocol: str, seed: int, test_fraction: float, folds: int,
                   fold_kwargs: dict) -> list[dict]:
    """The folds of `protocol` before logging (see make_folds)."""
    if protocol == "loso":
        _check_sessions(table, protocol)
        sessions = sorted(table["session"].unique())
        if len(sessions) < 2:
            raise SplitError("split.protocol loso needs >= 2 sessions; use speaker_kfold")
        return [_fold(f"fold{i + 1}", s, table, (table["session"] == s).to_numpy(), by_speaker=True, **fold_kwargs)
                for i, s in enumerate(sessions)]
    if protocol == "lospo":
        # Leave one speaker out; validation is the other speaker(s) of the held-out session (never trained on).
        _check_sessions(table, protocol)
        out = []
        for i, speaker in enumerate(sorted(table["speaker"].unique())):
            session = table.loc[table["speaker"] == speaker, "session"].iloc[0]
            partners = sorted(set(table.loc[table["session"] == session, "speaker"]) - {speaker})
            if not partners:
                raise SplitError(f"split.protocol lospo: session {session} has no second speaker for validation")
            test = table["speaker"] == speaker
            val = table["speaker"].isin(partners)
            out.append({"name": f"fold{i + 1}", "held_out": speaker, "train": sorted(table.loc[~test & ~val, "id"]),
                        "val": sorted(table.loc[val, "id"]), "val_speakers": partners,
                        "test": sorted(table.loc[test, "id"])})
        return out
    if protocol == "random":
        # The paper's split: utterance-level 80/20, here seeded; validation is utterance-level too.
        _, test = train_test_split(table["id"], test_size=test_fraction, random_state=seed)
        return [_fold("fold1", "random", table, table["id"].isin(set(test)).to_numpy(), by_speaker=False,
                      **fold_kwargs)]
    if protocol == "speaker_kfold":
        speakers = table["speaker"].unique()
        if len(speakers) < folds + 1:
            raise SplitError(f"split.protocol speaker_kfold with split.folds = {folds} needs >= {folds + 1} speakers "
                             f"(test and validation speakers apart); the corpus has {len(speakers)}")
        kfold = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        out = []
        for i, (_, test_idx) in enumerate(kfold.split(table, groups=table["speaker"])):
            mask = np.zeros(len(table), dtype=bool)
            mask[test_idx] = True
            held = ",".join(sorted(table.loc[mask, "speaker"].unique()))
            out.append(_fold(f"fold{i + 1}", held, table, mask, by_speaker=True, **fold_kwargs))
        return out
    raise SplitError(f"unknown split.protocol {protocol!r}; allowed: loso, lospo, random, speaker_kfold")


def make_folds(table: pd.DataFrame, *, protocol: str, seed: int, test_fraction: float, val_fraction: float,
               val_speakers: float, folds: int) -> list[dict]:
    """Folds for `protocol` over the prepared utterance table (columns id, label, speaker, session).

    Each fold: name, held_out, train / val / test ids and, in speaker-independent protocols, val_speakers.
    `val_speakers` is the fraction of a fold's training speakers held out for validation (speaker protocols);
    `val_fraction` the fraction of training utterances (random).
    """
    out = protocol_folds(table, protocol=protocol, seed=seed, test_fraction=test_fraction, folds=folds,
                         fold_kwargs=dict(val_fraction=val_fraction, val_speakers=val_speakers, seed=seed))
    for f in out:
        log.info("%s (held out %s): train %d, val %d (%s), test %d", f["name"], f["held_out"], len(f["train"]),
                 len(f["val"]), f"{len(f['val_speakers'])} speakers" if "val_speakers" in f else "utterances",
                 len(f["test"]))
    return out


def validation_kind(protocol: str) -> str:
    """What validation holds out under `protocol`, as written into splits.json."""
    if protocol == "random":
        return "utterances (random, stratified; its speakers are also trained on, as in the paper's protocol)"
    return "speakers (held out of training and test; every choice on validation is made on unseen voices)"
