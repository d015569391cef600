"""Evaluation protocols: folds partition the data, and speaker-independent ones share no speaker between any
two of train, validation and test."""

from __future__ import annotations

import pandas as pd
import pytest

from mmser.data.splits import make_folds

LABELS = ["ang", "hap", "sad", "neu"]


def _table(n_sessions: int = 5, per_speaker: int = 20, with_sessions: bool = True) -> pd.DataFrame:
    """n_sessions x 2 speakers x per_speaker utterances, labels cycling over 4 classes."""
    rows = []
    for s in range(1, n_sessions + 1):
        for g in "FM":
            for i in range(per_speaker):
                rows.append({"id": f"Ses{s:02d}{g}_{i:03d}", "label": LABELS[i % 4], "speaker": f"Ses{s:02d}{g}",
                             "session": f"Session{s}" if with_sessions else ""})
    return pd.DataFrame(rows)


def _folds(table: pd.DataFrame, protocol: str, seed: int = 0, folds: int = 5) -> list[dict]:
    return make_folds(table, protocol=protocol, seed=seed, test_fraction=0.2, val_fraction=0.1, val_speakers=0.2,
                      folds=folds)


def _assert_speaker_disjoint(fold: dict, table: pd.DataFrame) -> None:
    train, val, test = (_speakers(table, fold[s]) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test, fold["name"]
    assert val == set(fold["val_speakers"])


def _assert_partition(fold: dict, table: pd.DataFrame) -> None:
    train, val, test = set(fold["train"]), set(fold["val"]), set(fold["test"])
    assert len(train) == len(fold["train"]) and len(val) == len(fold["val"]) and len(test) == len(fold["test"])
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(table["id"])
    assert train and val and test


def _speakers(table: pd.DataFrame, ids: list[str]) -> set[str]:
    return set(table.set_index("id").loc[ids, "speaker"])


def test_loso_one_fold_per_session_and_speaker_independent() -> None:
    table = _table()
    folds = _folds(table, "loso")
    assert len(folds) == 5
    assert [f["held_out"] for f in folds] == [f"Session{s}" for s in range(1, 6)]
    by_id = table.set_index("id")
    for fold in folds:
        _assert_partition(fold, table)
        assert set(by_id.loc[fold["test"], "session"]) == {fold["held_out"]}
        assert len(fold["test"]) == 40  # the whole held-out session
        assert fold["held_out"] not in set(by_id.loc[fold["train"] + fold["val"], "session"])
        assert not _speakers(table, fold["train"]) & _speakers(table, fold["test"])
        _assert_speaker_disjoint(fold, table)
        assert len(fold["val_speakers"]) == 2  # round(0.2 x 8 training speakers)
        # Validation is class-balanced as far as the speakers allow: every class is present in it.
        assert set(by_id.loc[fold["val"], "label"]) == set(LABELS)
    # Every utterance is tested exactly once across the folds.
    tested = [i for f in folds for i in f["test"]]
    assert sorted(tested) == sorted(table["id"])


def test_loso_is_deterministic_for_a_seed() -> None:
    table = _table()
    assert _folds(table, "loso", seed=3) == _folds(table, "loso", seed=3)
    assert [f["val_speakers"] for f in _folds(table, "loso", seed=3)] != \
        [f["val_speakers"] for f in _folds(table, "loso", seed=4)]  # only val moves
    assert [f["test"] for f in _folds(table, "loso", seed=3)] == [f["test"] for f in _folds(table, "loso", seed=4)]


def test_loso_without_sessions_fails() -> None:
    with pytest.raises(ValueError, match="loso needs a session"):
        _folds(_table(with_sessions=False), "loso")
    partly = _table()
    partly.loc[0, "session"] = ""
    with pytest.raises(ValueError, match="speaker_kfold"):
        _folds(partly, "loso")
    with pytest.raises(ValueError, match=">= 2 sessions"):
        _folds(_table(n_sessions=1), "loso")


def test_random_is_one_fold_with_a_fifth_held_out() -> None:
    table = _table()
    folds = _folds(table, "random", seed=7)
    assert len(folds) == 1
    (fold,) = folds
    _assert_partition(fold, table)
    assert len(fold["test"]) == 40  # 20% of 200
    assert len(fold["val"]) == 16  # 10% of the remaining 160
    assert folds == _folds(table, "random", seed=7)
    assert fold["test"] != _folds(table, "random", seed=8)[0]["test"]


def test_speaker_kfold_tests_every_speaker_once() -> None:
    table = _table(with_sessions=False)
    folds = _folds(table, "speaker_kfold", seed=1, folds=5)
    assert len(folds) == 5
    tested_speakers = []
    for fold in folds:
        _assert_partition(fold, table)
        test_speakers = _speakers(table, fold["test"])
        assert test_speakers == set(fold["held_out"].split(","))
        assert not _speakers(table, fold["train"]) & test_speakers
        _assert_speaker_disjoint(fold, table)
        tested_speakers.extend(test_speakers)
    assert sorted(tested_speakers) == sorted(table["speaker"].unique())  # each exactly once
    assert len(set(tested_speakers)) == 10
    assert folds == _folds(table, "speaker_kfold", seed=1, folds=5)


def test_speaker_kfold_with_too_few_speakers_fails() -> None:
    with pytest.raises(ValueError, match="split.folds = 5 needs >= 6 speakers .* the corpus has 4"):
        _folds(_table(n_sessions=2), "speaker_kfold", folds=5)
    # 2 speakers: each fold trains on one, so no speaker is left to validate on.
    with pytest.raises(ValueError, match="needs >= 3 speakers"):
        _folds(_table(n_sessions=1), "speaker_kfold", folds=2)


def test_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="unknown split.protocol"):
        _folds(_table(), "leave_one_out")


def test_lospo_holds_out_one_speaker_and_validates_on_the_partner() -> None:
    table = _table()
    folds = _folds(table, "lospo")
    assert len(folds) == 10
    assert sorted(f["held_out"] for f in folds) == sorted(table["speaker"].unique())
    for fold in folds:
        _assert_partition(fold, table)
        test_speakers, val_speakers = _speakers(table, fold["test"]), _speakers(table, fold["val"])
        train_speakers = _speakers(table, fold["train"])
        assert test_speakers == {fold["held_out"]}
        session = table.loc[table["speaker"] == fold["held_out"], "session"].iloc[0]
        assert val_speakers == set(table.loc[table["session"] == session, "speaker"]) - test_speakers
        assert not (train_speakers & (test_speakers | val_speakers))


def test_lospo_without_sessions_fails() -> None:
    with pytest.raises(ValueError, match="lospo"):
        _folds(_table(with_sessions=False), "lospo")


def test_loso_refuses_a_speaker_in_two_sessions() -> None:
    table = _table()
    table.loc[table["speaker"] == "Ses02F", "session"] = ["Session1"] * 10 + ["Session2"] * 10
    with pytest.raises(ValueError, match="speaker Ses02F appears in sessions Session1, Session2"):
        _folds(table, "loso")


def test_loso_with_one_training_speaker_fails_with_the_reason() -> None:
    table = _table(n_sessions=2)
    table = table[~((table["session"] == "Session1") & (table["speaker"] == "Ses01M"))]
    with pytest.raises(ValueError, match="leaves 1 training speaker"):
        _folds(table, "loso")


@pytest.mark.parametrize("n_speakers", [10, 30, 100])
def test_speaker_kfold_validation_speakers_scale_with_the_corpus(n_speakers: int) -> None:
    rows = [{"id": f"s{s:03d}_{i:02d}", "label": LABELS[(i + s) % 4], "speaker": f"s{s:03d}", "session": ""}
            for s in range(n_speakers) for i in range(12)]
    table = pd.DataFrame(rows)
    for fold in _folds(table, "speaker_kfold", folds=5):
        _assert_partition(fold, table)
        _assert_speaker_disjoint(fold, table)
        n_train_speakers = n_speakers - len(_speakers(table, fold["test"]))
        assert len(fold["val_speakers"]) == max(1, round(0.2 * n_train_speakers))


def test_validation_speakers_are_chosen_for_class_balance() -> None:
    # Speakers a..d say only "ang"; e..h are balanced. A balanced validation avoids the one-class speakers.
    rows = []
    for s in "abcd":
        rows += [{"id": f"{s}{i}", "label": "ang", "speaker": s, "session": ""} for i in range(8)]
    for s in "efgh":
        rows += [{"id": f"{s}{i}", "label": LABELS[i % 4], "speaker": s, "session": ""} for i in range(8)]
    from mmser.data.splits import validation_speakers

    table = pd.DataFrame(rows)
    chosen = validation_speakers(table, fraction=0.25, seed=0, where="test")
    assert len(chosen) == 2
    labels = set(table.loc[table["speaker"].isin(chosen), "label"])
    assert len(labels) >= 2  # never two one-class speakers


def test_random_validation_is_utterance_level_and_says_so() -> None:
    from mmser.data.splits import validation_kind

    (fold,) = _folds(_table(), "random")
    assert "val_speakers" not in fold
    assert validation_kind("random").startswith("utterances") and validation_kind("loso").startswith("speakers")
