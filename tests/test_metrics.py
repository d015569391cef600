"""UA, WA and macro-F1 against numbers worked out by hand; seeded bootstrap intervals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from mmser.metrics import (bootstrap_draws, bootstrap_scores, confusion, macro_f1, per_class_recall,
                           percentile_interval, scores, unweighted_accuracy, weighted_accuracy)

# Imbalanced: class 0 has 4 examples, classes 1 and 2 have 2 each. The model favours class 0.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 0, 0, 1, 0, 2])
# Recalls 4/4, 1/2, 1/2.  UA = (1 + 1/2 + 1/2) / 3;  WA = 6 correct / 8.
UA = Fraction(1 + Fraction(1, 2) + Fraction(1, 2), 3)
WA = Fraction(6, 8)
# F1 = 2 tp / (support + predicted): class 0: 8/10, class 1: 2/3, class 2: 2/3.
MACRO_F1 = (Fraction(8, 10) + Fraction(2, 3) + Fraction(2, 3)) / 3


def test_confusion_rows_are_true_classes() -> None:
    matrix = confusion(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(matrix, [[4, 0, 0],
                                           [1, 1, 0],
                                           [1, 0, 1]])
    # A single error: true 2 predicted as 1 lands in row 2, column 1.
    assert confusion(np.array([2]), np.array([1]), 3)[2, 1] == 1
    assert confusion(np.array([2]), np.array([1]), 3).sum() == 1


def test_ua_and_wa_by_hand_differ_on_imbalanced_classes() -> None:
    matrix = confusion(Y_TRUE, Y_PRED, 3)
    assert UA == Fraction(2, 3) and WA == Fraction(3, 4)
    assert unweighted_accuracy(matrix) == pytest.approx(float(UA))
    assert weighted_accuracy(matrix) == pytest.approx(float(WA))
    assert unweighted_accuracy(matrix) != pytest.approx(weighted_accuracy(matrix))
    np.testing.assert_allclose(per_class_recall(matrix), [1.0, 0.5, 0.5])
    assert unweighted_accuracy(matrix) == pytest.approx(balanced_accuracy_score(Y_TRUE, Y_PRED))


def test_macro_f1_by_hand() -> None:
    assert MACRO_F1 == Fraction(32, 45)
    assert macro_f1(confusion(Y_TRUE, Y_PRED, 3)) == pytest.approx(float(MACRO_F1))
    assert macro_f1(confusion(Y_TRUE, Y_PRED, 3)) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))


def test_class_absent_from_y_true_is_excluded_from_ua() -> None:
    # Four classes, class 3 never true; one class-0 example is predicted as 3.
    y_pred = np.array([0, 0, 0, 3, 0, 1, 0, 2])
    matrix = confusion(Y_TRUE, y_pred, 4)
    recall = per_class_recall(matrix)
    assert np.isnan(recall[3])
    # UA over the 3 present classes: (3/4 + 1/2 + 1/2) / 3 = 7/12, not divided by 4.
    assert unweighted_accuracy(matrix) == pytest.approx(float(Fraction(7, 12)))
    assert weighted_accuracy(matrix) == pytest.approx(float(Fraction(5, 8)))
    # Class 3 was predicted, so it counts in macro-F1 with F1 = 0: (2/3 + 2/3 + 2/3 + 0) / 4 = 1/2.
    assert macro_f1(matrix) == pytest.approx(0.5)
    assert macro_f1(matrix) == pytest.approx(f1_score(Y_TRUE, y_pred, average="macro"))


def test_class_absent_everywhere_changes_nothing() -> None:
    three, four = confusion(Y_TRUE, Y_PRED, 3), confusion(Y_TRUE, Y_PRED, 4)
    assert unweighted_accuracy(four) == pytest.approx(unweighted_accuracy(three))
    assert weighted_accuracy(four) == pytest.approx(weighted_accuracy(three))
    assert macro_f1(four) == pytest.approx(macro_f1(three))


def test_scores_names_and_recall_per_class() -> None:
    out = scores(Y_TRUE, Y_PRED, ["ang", "hap", "sad", "neu"])
    assert out["ua"] == pytest.approx(2 / 3)
    assert out["wa"] == pytest.approx(3 / 4)
    assert out["macro_f1"] == pytest.approx(32 / 45)
    assert out["recall"] == {"ang": 1.0, "hap": 0.5, "sad": 0.5, "neu": None}
    assert out["n"] == 8


def _folds(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two folds of 4-class predictions, about 70% correct."""
    rng = np.random.default_rng(seed)
    folds = []
    for n in (120, 80):
        y = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 4, n))
        folds.append((y, pred))
    return folds


def test_bootstrap_draws_are_seeded() -> None:
    a = bootstrap_draws([5, 3], resamples=4, seed=11)
    b = bootstrap_draws([5, 3], resamples=4, seed=11)
    c = bootstrap_draws([5, 3], resamples=4, seed=12)
    assert len(a) == 4 and all(len(r) == 2 for r in a)
    assert [len(idx) for idx in a[0]] == [5, 3]
    assert all(idx.min() >= 0 and idx.max() < n for r in a for idx, n in zip(r, (5, 3)))
    assert all(np.array_equal(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    assert not all(np.array_equal(x, y) for ra, rc in zip(a, c) for x, y in zip(ra, rc))


def test_bootstrap_scores_deterministic_and_identity_draw_gives_point_estimate() -> None:
    folds = _folds()
    draws = bootstrap_draws([len(t) for t, _ in folds], resamples=200, seed=5)
    first = bootstrap_scores(folds, 4, draws)
    second = bootstrap_scores(folds, 4, bootstrap_draws([len(t) for t, _ in folds], resamples=200, seed=5))
    assert first["ua"].shape == first["wa"].shape == (200,)
    np.testing.assert_array_equal(first["ua"], second["ua"])
    np.testing.assert_array_equal(first["wa"], second["wa"])

    # The identity resample reproduces the point estimates (mean over folds).
    identity = bootstrap_scores(folds, 4, [[np.arange(len(t)) for t, _ in folds]])
    point_ua = np.mean([unweighted_accuracy(confusion(t, p, 4)) for t, p in folds])
    point_wa = np.mean([weighted_accuracy(confusion(t, p, 4)) for t, p in folds])
    assert identity["ua"][0] == pytest.approx(point_ua)
    assert identity["wa"][0] == pytest.approx(point_wa)

    for name, point in (("ua", point_ua), ("wa", point_wa)):
        lo, hi = percentile_interval(first[name])
        assert lo < point < hi
        assert 0.02 < hi - lo < 0.3  # 200 utterances: a few points either side


def test_percentile_interval() -> None:
    samples = np.arange(101, dtype=float)  # 0..100: percentiles equal their values
    assert percentile_interval(samples) == pytest.approx([2.5, 97.5])
    assert percentile_interval(samples, level=0.9) == pytest.approx([5.0, 95.0])
    assert percentile_interval(np.full(10, 0.7)) == pytest.approx([0.7, 0.7])


def test_bootstrap_scores_are_ua_and_wa_of_each_resample_averaged_over_folds() -> None:
    from mmser.metrics import bootstrap_draws, bootstrap_scores, confusion, unweighted_accuracy, weighted_accuracy

    rng = np.random.default_rng(5)
    # A 3-utterance fold: many resamples miss a class, which UA then skips (NaN recall), as unweighted_accuracy.
    folds = [(rng.integers(0, 4, 40), rng.integers(0, 4, 40)), (np.array([0, 0, 2]), np.array([0, 1, 2]))]
    draws = bootstrap_draws([40, 3], resamples=200, seed=2)
    got = bootstrap_scores(folds, 4, draws)
    for r, per_fold in enumerate(draws):
        mats = [confusion(t[i], p[i], 4) for (t, p), i in zip(folds, per_fold)]
        assert got["ua"][r] == pytest.approx(np.mean([unweighted_accuracy(m) for m in mats]), abs=1e-12)
        assert got["wa"][r] == pytest.approx(np.mean([weighted_accuracy(m) for m in mats]), abs=1e-12)
