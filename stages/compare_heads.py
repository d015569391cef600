"""Stage compare_heads: every head of compare_heads.heads x modality on the same folds, chosen on validation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmser.ablation import compare_heads
from mmser.features import load_features
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import stage_run
from mmser.training import train_options


def main(args: argparse.Namespace, params: dict) -> None:
    base, p, heads = params["base"], params["train"], params["compare_heads"]
    features, _ = load_features(args.table, args.text, args.audio, classes=base.classes,
                                audio_pooling=p.audio_pooling)
    folds = [f for f in json.loads(Path(args.splits).read_text())["folds"]
             if int(f["name"].removeprefix("fold")) in p.folds]
    result = compare_heads(features, folds, heads=heads.heads, modalities=p.modalities, classes=base.classes,
                           seed=base.seed, train_kwargs=train_options(p),
                           resamples=params["evaluate"].bootstrap_resamples)
    with stage_run("compare_heads", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params={**flatten("train", p), **flatten("compare_heads", heads)},
                   inputs={"splits": args.splits, "text": args.text, "audio": args.audio}) as run:
        import mlflow

        mlflow.log_metrics({f"{h}_{m}_{k}": v[k] for h, per in result["heads"].items() for m, v in per.items()
                            for k in ("val_ua", "ua", "wa")})
        write_json(args.out, {**result, "configured_head": p.head, "mlflow_run_id": run.info.run_id})
        mlflow.log_artifact(args.out)
    if result["selected_head"] != p.head:
        log.warning("train.head is %s but %s wins on validation (%s)", p.head, result["selected_head"],
                    result["selected_by"])


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table", "splits", "text", "audio"], outputs=["out"])
