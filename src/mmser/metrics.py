"""Classification metrics with unambiguous names: UA = mean per-class recall, WA = accuracy.

The SERVER notebook computes `wa = balanced_accuracy_score` and `ua = accuracy_score`: the names are
swapped there. mmser uses the standard meaning.
"""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts: rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class absent from y_true)."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def unweighted_accuracy(matrix: np.ndarray) -> float:
    """UA: mean recall over the classes present in y_true (balanced accuracy)."""
    return float(np.nanmean(per_class_recall(matrix)))


def weighted_accuracy(matrix: np.ndarray) -> float:
    """WA: overall accuracy (each class weighted by its frequency)."""
    return float(np.trace(matrix) / matrix.sum())


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over classes present in y_true or y_pred."""
    tp = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return float(f1[present].mean())


def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """ua, wa, macro_f1 and per-class recall for one set of predictions."""
    matrix = confusion(y_true, y_pred, len(classes))
    recall = per_class_recall(matrix)
    return {
        "ua": unweighted_accuracy(matrix),
        "wa": weighted_accuracy(matrix),
        "macro_f1": macro_f1(matrix),
        "recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        "n": int(matrix.sum()),
    }


def bootstrap_draws(fold_sizes: list[int], *, resamples: int, seed: int) -> list[list[np.ndarray]]:
    """Seeded resampling indices, per resample and fold; shared by models so comparisons are paired."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, n, n) for n in fold_sizes] for _ in range(resamples)]


def bootstrap_scores(folds: list[tuple[np.ndarray, np.ndarray]], n_classes: int,
                     draws: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    """UA and WA (mean over folds, as reported) for every resample of utterances within each fold.

    All resamples of a fold at once: one confusion matrix per resample from one bincount, then UA and WA as
    unweighted_accuracy and weighted_accuracy define them (classes absent from a resample's y_true are skipped).
    """
    k = n_classes
    ua, wa = np.zeros(len(draws)), np.zeros(len(draws))
    for f, (t, p) in enumerate(folds):
        idx = np.stack([per_fold[f] for per_fold in draws])  # (resamples, n)
        cell = np.asarray(t)[idx] * k + np.asarray(p)[idx] + (np.arange(len(draws)) * k * k)[:, None]
        mats = np.bincount(cell.ravel(), minlength=len(draws) * k * k).reshape(len(draws), k, k)
        support, hits = mats.sum(axis=2), np.diagonal(mats, axis1=1, axis2=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            ua += np.nanmean(np.where(support > 0, hits / support, np.nan), axis=1)
        wa += hits.sum(axis=1) / mats.sum(axis=(1, 2))
    return {"ua": ua / len(folds), "wa": wa / len(folds)}


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Two-sided percentile interval of bootstrap samples."""
    lo, hi = np.percentile(samples, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return [float(lo), float(hi)]
