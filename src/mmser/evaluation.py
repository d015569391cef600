"""Test-set evaluation of trained heads: per-fold and mean scores, bootstrap intervals, paired comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmser.metrics import bootstrap_draws, bootstrap_scores, confusion, percentile_interval, scores
from mmser.models.module import EmotionClassifier
from mmser.training import Features


def predict_fold(checkpoint: str, features: Features, test_ids: list[str], modality: str) -> np.ndarray:
    """Class probabilities of the test utterances under one checkpoint."""
    model = EmotionClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    return model.predict_proba(*features.batch(features.rows(test_ids), modality))


def fold_predictions(checkpoint: str, features: Features, test_ids: list[str], *, modality: str, label: str,
                     fold: str, classes: list[str]) -> pd.DataFrame:
    """One row per test utterance: id, modality `label`, fold, p_<class>..., true/predicted index and class."""
    probs = predict_fold(checkpoint, features, test_ids, modality)
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
    frame.insert(0, "id", test_ids)
    frame.insert(1, "modality", label)
    frame.insert(2, "fold", fold)
    frame["true_idx"] = features.y[features.rows(test_ids)]
    frame["pred_idx"] = probs.argmax(axis=1)
    frame["label"] = [classes[i] for i in frame["true_idx"]]
    frame["pred"] = [classes[i] for i in frame["pred_idx"]]
    return frame


def write_reports(predictions: pd.DataFrame, summary: dict, history: pd.DataFrame, classes: list[str],
                  reports: Path) -> None:
    """Per modality: predictions CSV (for `dvc plots`), confusion matrix and training curves as PNG."""
    from mmser.plots import confusion_png, curves_png

    (reports / "predictions").mkdir(parents=True, exist_ok=True)
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    for modality, rows in predictions.groupby("modality", sort=False):
        rows.drop(columns=["modality", "true_idx", "pred_idx"]).to_csv(reports / "predictions" / f"{modality}.csv",
                                                                       index=False)
        s = summary[modality]
        confusion_png(pooled_confusion(rows, len(classes)), classes, reports / "plots" / f"confusion_{modality}.png",
                      f"{modality}: UA {s['ua']:.3f}, WA {s['wa']:.3f} (all test folds)")
        curves_png(history[history["modality"] == modality], reports / "plots" / f"curves_{modality}.png",
                   f"{modality} training curves")


def fold_order(predictions: pd.DataFrame) -> list[str]:
    """Fold names in natural order (fold2 before fold10)."""
    return sorted(predictions["fold"].unique(), key=lambda f: (len(f), f))


def fold_pairs(predictions: pd.DataFrame, modality: str, folds: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(y_true, y_pred) per fold for one modality, utterances in id order (so resampling indices pair up)."""
    rows = predictions[predictions["modality"] == modality]
    parts = [rows[rows["fold"] == f].sort_values("id") for f in folds]
    return [(p["true_idx"].to_numpy(), p["pred_idx"].to_numpy()) for p in parts]


def paired_ua_test(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]], n_classes: int,
                   *, resamples: int, seed: int) -> dict:
    """Paired bootstrap of UA(a) - UA(b) on the same resampled test utterances; one-sided p that a <= b."""
    draws = bootstrap_draws([len(t) for t, _ in a], resamples=resamples, seed=seed)
    diff = bootstrap_scores(a, n_classes, draws)["ua"] - bootstrap_scores(b, n_classes, draws)["ua"]
    return {"ua_diff_ci95": percentile_interval(diff), "p_value": float((np.sum(diff <= 0) + 1) / (len(diff) + 1))}


def summarise(predictions: pd.DataFrame, classes: list[str], *, resamples: int, seed: int) -> dict:
    """Per modality: mean ± std over folds, 95% bootstrap intervals, per-class recall, per-fold scores;
    plus a paired bootstrap p-value for fusion against the better unimodal model."""
    folds = fold_order(predictions)
    first = predictions["modality"].iloc[0]
    draws = bootstrap_draws([len(t) for t, _ in fold_pairs(predictions, first, folds)], resamples=resamples,
                            seed=seed)
    summary: dict = {}
    for modality, rows in predictions.groupby("modality", sort=False):
        pairs = fold_pairs(predictions, modality, folds)
        per_fold = {f: {k: v for k, v in scores(t, p, classes).items() if k != "recall"}
                    for f, (t, p) in zip(folds, pairs)}
        pooled = scores(rows["true_idx"].to_numpy(), rows["pred_idx"].to_numpy(), classes)
        boot = bootstrap_scores(pairs, len(classes), draws)
        entry = {}
        for key in ("ua", "wa", "macro_f1"):
            values = [per_fold[f][key] for f in folds]
            entry[key], entry[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        entry["ua_ci95"] = percentile_interval(boot["ua"])
        entry["wa_ci95"] = percentile_interval(boot["wa"])
        entry["recall"] = pooled["recall"]
        entry["n_test"] = pooled["n"]
        entry["per_fold"] = per_fold
        summary[modality] = entry
    unimodal = [m for m in ("text", "audio") if m in summary]
    if "fusion" in summary and unimodal:
        best = max(unimodal, key=lambda m: summary[m]["ua"])
        summary["fusion_vs_best_unimodal"] = {
            "other": best, "ua_diff": summary["fusion"]["ua"] - summary[best]["ua"],
            **paired_ua_test(fold_pairs(predictions, "fusion", folds), fold_pairs(predictions, best, folds),
                             len(classes), resamples=resamples, seed=seed),
        }
    return summary


def pooled_confusion(rows: pd.DataFrame, n_classes: int) -> np.ndarray:
    """Confusion counts over every fold's test predictions."""
    return confusion(rows["true_idx"].to_numpy(), rows["pred_idx"].to_numpy(), n_classes)


def results_markdown(summary: dict, *, corpus: str, protocol: str) -> str:
    """The README's results table, generated from metrics/summary.json."""
    lines = [f"Corpus: **{corpus}**, protocol: **{protocol}**; mean ± std over folds, "
             "[95% bootstrap interval] over test utterances.", "",
             "| modality | UA | WA | macro-F1 |", "|---|---|---|---|"]
    for modality in ("text", "audio", "fusion"):
        if modality in summary:
            s = summary[modality]
            lines.append(f"| {modality} | {s['ua']:.3f} ± {s['ua_std']:.3f} [{s['ua_ci95'][0]:.3f}, "
                         f"{s['ua_ci95'][1]:.3f}] | {s['wa']:.3f} ± {s['wa_std']:.3f} [{s['wa_ci95'][0]:.3f}, "
                         f"{s['wa_ci95'][1]:.3f}] | {s['macro_f1']:.3f} ± {s['macro_f1_std']:.3f} |")
    if "fusion_vs_best_unimodal" in summary:
        c = summary["fusion_vs_best_unimodal"]
        lines += ["", f"Fusion − {c['other']} UA: {c['ua_diff']:+.3f} [{c['ua_diff_ci95'][0]:+.3f}, "
                      f"{c['ua_diff_ci95'][1]:+.3f}], paired bootstrap p = {c['p_value']:.4f}."]
    return "\n".join(lines) + "\n"
