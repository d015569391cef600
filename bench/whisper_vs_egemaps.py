"""Sanity check of the Whisper encoder against eGeMAPS on a real corpus: one plain classifier, unseen speakers.

For a manifest folder (manifest.csv with path, label, speaker; paths relative to it), both encoders embed
every clip through the project's extractor and embedding cache (a rerun costs nothing), then a
StandardScaler + LogisticRegression (C chosen on the training speakers by an inner GroupKFold) is scored
on GroupKFold(5) over speakers. UA = balanced accuracy (mean per-class recall), WA = accuracy.
Prints one JSON object: per encoder, UA/WA per fold, mean and std, pooled out-of-fold UA, extraction seconds.
Usage: `python bench/whisper_vs_egemaps.py ../shared/data/ased [--whisper-input clip|padded] [--speakers K]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mmser.cache import EmbeddingCache  # noqa: E402
from mmser.embeddings import pool  # noqa: E402
from mmser.extract import extract_audio  # noqa: E402

C_GRID = (0.001, 0.01, 0.1, 1.0)  # strong regularisation matters with 512-d inputs and a few thousand clips


def _encoder(name: str, whisper_input: str, compute_type: str):
    if name == "egemaps":
        from mmser.encoders.egemaps import EGeMAPSEncoder

        return EGeMAPSEncoder()
    from mmser.encoders.whisper import WhisperEncoder

    return WhisperEncoder(pooling="mean", compute_type=compute_type, padded=whisper_input == "padded")


def score(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """UA/WA of StandardScaler + LogisticRegression on speaker-disjoint folds, C chosen on training speakers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    outer = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = np.empty_like(y)
    ua, wa, chosen = [], [], []
    for train, test in outer.split(x, y, groups):
        search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                              {"logisticregression__C": list(C_GRID)}, scoring="balanced_accuracy",
                              cv=GroupKFold(n_splits=3))
        search.fit(x[train], y[train], groups=groups[train])
        pred[test] = search.predict(x[test])
        ua.append(balanced_accuracy_score(y[test], pred[test]))
        wa.append(accuracy_score(y[test], pred[test]))
        chosen.append(search.best_params_["logisticregression__C"])
    return {"ua_per_fold": [round(v, 4) for v in ua], "ua_mean": round(float(np.mean(ua)), 4),
            "ua_std": round(float(np.std(ua)), 4), "wa_mean": round(float(np.mean(wa)), 4),
            "ua_pooled": round(float(balanced_accuracy_score(y, pred)), 4), "c_chosen": chosen}


def main() -> None:
    """Embed, score, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="folder with manifest.csv (path, label, speaker)")
    parser.add_argument("--encoders", nargs="+", default=["whisper", "egemaps"])
    parser.add_argument("--whisper-input", choices=["clip", "padded"], default="clip")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--speakers", type=int, default=0, help="the first K speakers (sorted) only (0 = all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.corpus)
    table = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    if args.speakers:
        table = table[table["speaker"].isin(sorted(set(table["speaker"]))[:args.speakers])]
    paths = [str(root / p) for p in table["path"]]
    y, groups = table["label"].to_numpy(), table["speaker"].to_numpy()
    if len(set(groups)) < 6:  # 5 outer folds, and >= 2 training speakers per inner fold
        raise SystemExit(f"{root}: {len(set(groups))} speakers; speaker-disjoint folds need at least 6")
    result = {"corpus": str(root), "clips": len(table), "speakers": int(len(set(groups))),
              "classes": sorted(set(y)), "protocol": "GroupKFold(5) over speakers; C by inner GroupKFold(3)"}
    with EmbeddingCache() as cache:
        for name in args.encoders:
            encoder = _encoder(name, args.whisper_input, args.compute_type)
            start = time.perf_counter()
            frames, stats = extract_audio(paths, encoder, cache, sample_rate=16000, workers=0)
            seconds = time.perf_counter() - start
            x = pool(frames, "mean")
            result[name] = {"identity": encoder.identity(), "dim": int(x.shape[1]),
                            "extract_seconds": round(seconds, 1), "computed": stats.misses,
                            "clips_per_s": round(stats.misses / seconds, 2) if stats.misses else None,
                            **score(x, y, groups)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
