"""One training pass, the pipeline selects: every candidate (head x weight decay) is trained once per fold, the
best mean validation UA over folds is chosen, and the chosen configuration is refit on all labelled data."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from mmser.features import Features
from mmser.metrics import confusion, unweighted_accuracy
from mmser.training import Fit, Job, fit_head, fit_heads

log = logging.getLogger(__name__)

SELECTED_BY = "mean validation UA over folds (validation speakers are never trained or tested on)"


@dataclasses.dataclass  # not frozen: ddp_spawn returns results through Lightning's apply_to_collection
class Candidate:
    """One configuration the pipeline may choose: a head and its weight decay."""

    head: str
    weight_decay: float

    @property
    def name(self) -> str:
        return f"{self.head}/wd={self.weight_decay:g}"


def candidate_grid(heads: list[str], weight_decays: list[float]) -> list[Candidate]:
    """Every head x weight decay, in params order (the order breaks ties)."""
    return [Candidate(h, wd) for h in heads for wd in weight_decays]


def prediction_rows(probs: np.ndarray, ids: list[str], y: np.ndarray, *, classes: list[str], **columns) -> pd.DataFrame:
    """One row per utterance: id, the given label columns, p_<class>..., true/predicted index and class."""
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
    frame.insert(0, "id", ids)
    for i, (key, value) in enumerate(columns.items()):
        frame.insert(i + 1, key, value)
    frame["true_idx"] = y
    frame["pred_idx"] = probs.argmax(axis=1)
    frame["label"] = [classes[i] for i in frame["true_idx"]]
    frame["pred"] = [classes[i] for i in frame["pred_idx"]]
    return frame


def predict_ids(model, features: Features, ids: list[str], modality: str) -> np.ndarray:
    """Class probabilities of `ids` under a trained EmotionClassifier."""
    return model.predict_proba(*features.batch(features.rows(ids), modality))


@dataclasses.dataclass
class Sweep:
    """Every candidate's fold fits: predictions on validation and test, records, the kept fits."""

    predictions: pd.DataFrame
    records: list[dict]
    fits: dict[tuple[str, str], Fit]


def train_candidates(fabric, features: Features, folds: list[dict], *, modality: str, candidates: list[Candidate],
                     classes: list[str], seed: int, options: dict) -> Sweep:
    """Train each candidate once on each fold's training part, all in the same steps (fit_heads); predict each
    fit's validation and test utterances."""
    options = dict(options)
    epochs, early_stopping = options.pop("epochs"), options.pop("early_stopping")
    cells = [(candidate, fold) for candidate in candidates for fold in folds]
    jobs = [Job(c.head, c.weight_decay, fold["train"], fold["val"], epochs, early_stopping) for c, fold in cells]
    log.info("train %s: %d candidates x %d folds in one pass", modality, len(candidates), len(folds))
    trained = fit_heads(fabric, features, jobs, modality=modality, classes=classes, seed=seed,
                        progress_name=f"train {modality}", **options)
    frames, records, fits = [], [], {}
    for (candidate, fold), fit in zip(cells, trained):
        fits[(candidate.name, fold["name"])] = fit
        for split in ("val", "test"):
            ids = fold[split]
            frames.append(prediction_rows(predict_ids(fit.model, features, ids, modality), ids,
                                          features.y[features.rows(ids)], classes=classes,
                                          candidate=candidate.name, fold=fold["name"], split=split))
        records.append({"candidate": candidate.name, "head": candidate.head, "weight_decay": candidate.weight_decay,
                        "fold": fold["name"], "best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
                        "val_ua": fit.best_val_ua})
    return Sweep(pd.concat(frames, ignore_index=True), records, fits)


def validation_ua(predictions: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Validation UA per (candidate, fold), from the kept models' validation predictions."""
    val = predictions[predictions["split"] == "val"]
    rows = [{"candidate": c, "fold": f, "val_ua": unweighted_accuracy(confusion(g["true_idx"], g["pred_idx"],
                                                                                  n_classes))}
            for (c, f), g in val.groupby(["candidate", "fold"], sort=False)]
    return pd.DataFrame(rows)


def select(predictions: pd.DataFrame, candidates: list[Candidate], n_classes: int) -> tuple[Candidate, dict]:
    """The candidate with the best mean validation UA over folds (ties: the earlier in params order)."""
    mean = validation_ua(predictions, n_classes).groupby("candidate")["val_ua"].mean()
    chosen = max(candidates, key=lambda c: (mean[c.name], -candidates.index(c)))
    log.info("validation UA per candidate: %s -> %s", {c.name: round(float(mean[c.name]), 4) for c in candidates},
             chosen.name)
    return chosen, {c.name: float(mean[c.name]) for c in candidates}


def refit_epochs(records: list[dict], candidate: Candidate) -> int:
    """Epochs for the refit on all data: the median best epoch of the candidate's fold fits (at least 1)."""
    best = [r["best_epoch"] for r in records if r["candidate"] == candidate.name]
    return max(1, int(round(float(np.median(best)))))


def refit(fabric, features: Features, ids: list[str], *, modality: str, candidate: Candidate, epochs: int,
          classes: list[str], seed: int, options: dict) -> Fit:
    """The chosen configuration trained on every labelled utterance for `epochs` epochs (no validation left)."""
    options = {**options, "epochs": epochs, "early_stopping": 0}
    return fit_head(fabric, features, train_ids=ids, val_ids=[], modality=modality, classes=classes, seed=seed,
                    head=candidate.head, weight_decay=candidate.weight_decay, **options)


@dataclasses.dataclass
class ModalityResult:
    """One modality's training pass: the sweep, the chosen candidate, the validation means and the refit."""

    sweep: Sweep
    chosen: Candidate
    val_means: dict[str, float]
    epochs: int
    final: Fit


def train_modality(fabric, features: Features, folds: list[dict], *, modality: str, candidates: list[Candidate],
                   classes: list[str], seed: int, options: dict) -> ModalityResult:
    """Every candidate on every fold, the choice on validation, and the chosen configuration refit on all data."""
    sweep = train_candidates(fabric, features, folds, modality=modality, candidates=candidates, classes=classes,
                             seed=seed, options=options)
    chosen, val_means = select(sweep.predictions, candidates, len(classes))
    epochs = refit_epochs(sweep.records, chosen)
    final = refit(fabric, features, features.ids, modality=modality, candidate=chosen, epochs=epochs,
                  classes=classes, seed=seed, options=options)
    return ModalityResult(sweep, chosen, val_means, epochs, final)
