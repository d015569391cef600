"""Test-set evaluation of trained heads: per-fold and mean scores, bootstrap intervals, paired comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mmser.metrics import bootstrap_draws, bootstrap_scores, confusion, percentile_interval, scores
from mmser.models.module import EmotionClassifier
from mmser.training import Features


def predict_fold(checkpoint: str, features: Features, test_ids: list[str], modality: str) -> np.ndarray:
    """Class probabilities of the test utterances under one checkpoint."""
    model = EmotionClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    rows = features.rows(test_ids)
    text = torch.from_numpy(features.text[rows]) if modality in ("text", "fusion") else None
    audio = torch.from_numpy(features.audio[rows]) if modality in ("audio", "fusion") else None
    return model.predict_proba(text, audio)


def summarise(predictions: pd.DataFrame, classes: list[str], *, resamples: int, seed: int) -> dict:
    """Per modality: mean ± std over folds, 95% bootstrap intervals, per-class recall, per-fold scores;
    plus a paired bootstrap p-value for fusion against the better unimodal model."""
    folds = sorted(predictions["fold"].unique(), key=lambda f: (len(f), f))
    sizes = [int(((predictions["fold"] == f) & (predictions["modality"] == predictions["modality"].iloc[0])).sum())
             for f in folds]
    draws = bootstrap_draws(sizes, resamples=resamples, seed=seed)
    summary: dict = {}
    boot: dict[str, dict[str, np.ndarray]] = {}
    for modality, rows in predictions.groupby("modality", sort=False):
        per_fold, pairs = {}, []
        for fold in folds:
            part = rows[rows["fold"] == fold].sort_values("id")
            y_true, y_pred = part["true_idx"].to_numpy(), part["pred_idx"].to_numpy()
            pairs.append((y_true, y_pred))
            per_fold[fold] = {k: v for k, v in scores(y_true, y_pred, classes).items() if k != "recall"}
        pooled = scores(rows["true_idx"].to_numpy(), rows["pred_idx"].to_numpy(), classes)
        boot[modality] = bootstrap_scores(pairs, len(classes), draws)
        entry = {}
        for key in ("ua", "wa", "macro_f1"):
            values = [per_fold[f][key] for f in folds]
            entry[key], entry[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        entry["ua_ci95"] = percentile_interval(boot[modality]["ua"])
        entry["wa_ci95"] = percentile_interval(boot[modality]["wa"])
        entry["recall"] = pooled["recall"]
        entry["n_test"] = pooled["n"]
        entry["per_fold"] = per_fold
        summary[modality] = entry
    unimodal = [m for m in ("text", "audio") if m in summary]
    if "fusion" in summary and unimodal:
        best = max(unimodal, key=lambda m: summary[m]["ua"])
        diff = boot["fusion"]["ua"] - boot[best]["ua"]
        summary["fusion_vs_best_unimodal"] = {
            "other": best, "ua_diff": summary["fusion"]["ua"] - summary[best]["ua"],
            "ua_diff_ci95": percentile_interval(diff),
            # One-sided: how often fusion fails to beat the other model when the test utterances are resampled.
            "p_value": float((np.sum(diff <= 0) + 1) / (len(diff) + 1)),
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
