"""Head comparison on the same folds: every head x modality, chosen on validation, reported on test."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from mmser.evaluation import fold_order, fold_pairs, fold_predictions, paired_ua_test, summarise
from mmser.training import Features, train_one

log = logging.getLogger(__name__)


def compare_heads(features: Features, folds: list[dict], *, heads: list[str], modalities: list[str],
                  classes: list[str], seed: int, train_kwargs: dict, resamples: int) -> dict:
    """Train each head on each (modality, fold); the selected head is the best mean *validation* UA on fusion
    (or the last modality listed); test scores, intervals and a paired test against `server` are reported."""
    records, frames = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for head in heads:
            for modality in modalities:
                for fold in folds:
                    out = Path(scratch) / head / modality / fold["name"]
                    record = train_one(features, fold, modality=modality, classes=classes, out_dir=out, seed=seed,
                                       head=head, tracking=None, card={}, **train_kwargs)
                    records.append({"head": head, **record})
                    frames.append(fold_predictions(str(out / "model.ckpt"), features, fold["test"],
                                                   modality=modality, label=f"{head}/{modality}",
                                                   fold=fold["name"], classes=classes))
    predictions = pd.concat(frames, ignore_index=True)
    summary = summarise(predictions, classes, resamples=resamples, seed=seed)
    val = pd.DataFrame(records).groupby(["head", "modality"])["best_val_ua"].mean()
    focus = "fusion" if "fusion" in modalities else modalities[-1]
    selected = max(heads, key=lambda h: (val[(h, focus)], h == "server"))
    result: dict = {"selected_head": selected, "selected_by": f"mean validation UA of {focus} over folds",
                    "heads": {}}
    for head in heads:
        result["heads"][head] = {m: {"val_ua": float(val[(head, m)]),
                                     **{k: summary[f"{head}/{m}"][k] for k in
                                        ("ua", "ua_std", "ua_ci95", "wa", "wa_std", "wa_ci95", "macro_f1")}}
                                 for m in modalities}
    if selected != "server" and "server" in heads:
        folds_in_order = fold_order(predictions)
        result["selected_vs_server"] = {
            "modality": focus,
            "ua_diff": result["heads"][selected][focus]["ua"] - result["heads"]["server"][focus]["ua"],
            **paired_ua_test(fold_pairs(predictions, f"{selected}/{focus}", folds_in_order),
                             fold_pairs(predictions, f"server/{focus}", folds_in_order), len(classes),
                             resamples=resamples, seed=seed)}
    log.info("heads on validation (%s): %s -> %s", focus, {h: round(val[(h, focus)], 4) for h in heads}, selected)
    return result
