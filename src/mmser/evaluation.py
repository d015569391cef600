"""Test-set evaluation from the train stages' predictions: per-fold and mean scores, bootstrap intervals, paired
comparisons (fusion against the better single modality, the chosen head against the logistic baseline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmser.metrics import bootstrap_draws, bootstrap_scores, confusion, percentile_interval, scores


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
        # UA is the mean recall over the classes a fold's test part holds: say which were absent, never hide it.
        absent = {f: [c for i, c in enumerate(classes) if not (t == i).any()] for f, (t, _) in zip(folds, pairs)}
        entry["classes_absent_from_test"] = {f: a for f, a in absent.items() if a}
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


def _ci(values: list[float], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"[{fmt.format(values[0])}, {fmt.format(values[1])}]"


def baseline_cells(baseline: dict) -> str:
    """Two table cells: the logistic baseline's UA [CI] and the chosen head's paired UA difference [CI] (p)."""
    c = baseline["vs_chosen"]
    return (f"{baseline['ua']:.3f} {_ci(baseline['ua_ci95'])} | {c['ua_diff']:+.3f} {_ci(c['ua_diff_ci95'], True)} "
            f"(p = {c['p_value']:.3f})")


def results_markdown(summary: dict, *, corpus: str, protocol: str) -> str:
    """The README's results table, generated from metrics/summary.json: each modality's chosen candidate beside
    the logistic-regression baseline on the same folds, with the paired test between them."""
    lines = [f"Corpus: **{corpus}**, protocol: **{protocol}**; mean ± std over folds, "
             "[95% bootstrap interval] over test utterances.", "",
             "| modality | chosen on validation | UA | WA | macro-F1 | logreg UA | chosen − logreg UA (p) |",
             "|---|---|---|---|---|---|---|"]
    for modality in ("text", "audio", "fusion"):
        if modality in summary:
            s = summary[modality]
            lines.append(f"| {modality} | {s['candidate']} | {s['ua']:.3f} ± {s['ua_std']:.3f} {_ci(s['ua_ci95'])} | "
                         f"{s['wa']:.3f} ± {s['wa_std']:.3f} {_ci(s['wa_ci95'])} | {s['macro_f1']:.3f} | "
                         f"{baseline_cells(summary[f'{modality}_baseline'])} |")
    if "fusion_vs_best_unimodal" in summary:
        c = summary["fusion_vs_best_unimodal"]
        lines += ["", f"Fusion − {c['other']} UA: {c['ua_diff']:+.3f} {_ci(c['ua_diff_ci95'], True)}, "
                      f"paired bootstrap p = {c['p_value']:.4f}."]
    return "\n".join(lines) + "\n"


def candidates_markdown(candidates: dict) -> str:
    """Every candidate and the baseline, per modality: mean validation UA (what selects) and test scores."""
    lines = [f"Chosen per modality by {candidates['selected_by']}; every row comes from the same trained models.", "",
             "| modality | candidate | val UA | test UA [95% CI] | test WA [95% CI] |", "|---|---|---|---|---|"]
    for row in candidates["candidates"]:
        name = f"**{row['candidate']}** (chosen)" if row["selected"] else row["candidate"]
        lines.append(f"| {row['modality']} | {name} | {row['val_ua']:.3f} | {row['ua']:.3f} {_ci(row['ua_ci95'])} | "
                     f"{row['wa']:.3f} {_ci(row['wa_ci95'])} |")
    return "\n".join(lines) + "\n"


def selected_frames(modality: str, predictions: pd.DataFrame, chosen: str) -> dict[str, pd.DataFrame]:
    """Test predictions under summary labels: `<modality>` (the chosen candidate), `<modality>/logreg`
    (the baseline) and `<modality>/<candidate>` for every candidate, all on the same test utterances."""
    test = predictions[predictions["split"] == "test"]
    out = {modality: test[test["candidate"] == chosen]}
    for candidate, rows in test.groupby("candidate", sort=False):
        out[f"{modality}/{candidate}"] = rows
    return {label: rows.drop(columns=["candidate", "split"]).assign(modality=label) for label, rows in out.items()}


def versus(predictions: pd.DataFrame, a: str, b: str, summary: dict, n_classes: int, *, resamples: int,
           seed: int) -> dict:
    """UA(a) - UA(b) on the same test utterances, with its paired bootstrap interval and one-sided p-value."""
    folds = fold_order(predictions)
    return {"a": a, "b": b, "ua_diff": summary[a]["ua"] - summary[b]["ua"],
            **paired_ua_test(fold_pairs(predictions, a, folds), fold_pairs(predictions, b, folds), n_classes,
                             resamples=resamples, seed=seed)}


def candidates_table(modality: str, record: dict, summary: dict) -> list[dict]:
    """Per candidate of one modality: mean validation UA (what selects) and test scores, from the same models."""
    rows = []
    for name in [*record["candidates"], "logreg"]:
        s = summary[f"{modality}/{name}"]
        baseline = record["baseline"]
        val = baseline["val_ua_by_C"][str(baseline["C"])] if name == "logreg" else record["val_ua"][name]
        rows.append({"modality": modality, "candidate": name, "selected": name == record["selected"]["candidate"],
                     "val_ua": val, **{k: s[k] for k in ("ua", "ua_std", "ua_ci95", "wa", "wa_ci95", "macro_f1")}})
    return rows
