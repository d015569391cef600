"""The reference every results table carries: scikit-learn's StandardScaler + LogisticRegression on the same
features and folds, its C chosen on the same validation speakers as the neural heads."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from mmser.features import Features
from mmser.metrics import confusion, unweighted_accuracy
from mmser.selection import prediction_rows

log = logging.getLogger(__name__)

NAME = "logreg"


def _pipeline(c: float, class_weights: bool, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed,
                                                              class_weight="balanced" if class_weights else None))


def _probs(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes (a class absent from a training part gets probability 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def logistic_baseline(features: Features, folds: list[dict], *, modality: str, classes: list[str],
                      c_grid: list[float], class_weights: bool, seed: int) -> tuple[pd.DataFrame, dict]:
    """Fit per fold on the training part for every C; keep the C with the best mean validation UA over folds.

    Returns the validation and test predictions of the chosen C (candidate `logreg`) and what was chosen.
    """
    from sklearn.exceptions import ConvergenceWarning

    val_ua: dict[float, list[float]] = {c: [] for c in c_grid}
    frames: dict[float, list[pd.DataFrame]] = {c: [] for c in c_grid}
    for fold in folds:
        x = {s: features.pooled(features.rows(fold[s]), modality) for s in ("train", "val", "test")}
        y = {s: features.y[features.rows(fold[s])] for s in ("train", "val", "test")}
        for c in c_grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = _pipeline(c, class_weights, seed).fit(x["train"], y["train"])
            for split in ("val", "test"):
                probs = _probs(model, x[split], len(classes))
                frames[c].append(prediction_rows(probs, fold[split], y[split], classes=classes, candidate=NAME,
                                                 fold=fold["name"], split=split))
            pred = frames[c][-2]["pred_idx"].to_numpy()
            val_ua[c].append(unweighted_accuracy(confusion(y["val"], pred, len(classes))))
    mean = {c: float(np.mean(v)) for c, v in val_ua.items()}
    chosen = max(c_grid, key=lambda c: (mean[c], -c_grid.index(c)))
    log.info("%s baseline (%s): validation UA per C %s -> C = %g", NAME, modality,
             {c: round(v, 4) for c, v in mean.items()}, chosen)
    return pd.concat(frames[chosen], ignore_index=True), {"C": chosen, "val_ua_by_C": {str(c): v for c, v in
                                                                                      mean.items()}}
