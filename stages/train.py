"""Stage train (one per modality x fold in dvc.yaml's matrix): fit a head on cached embeddings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmser.distributed import is_launch_rank_zero
from mmser.features import load_features
from mmser.params import flatten
from mmser.stage import pipeline_parent, run_stage
from mmser.training import train_one, train_options


def main(args: argparse.Namespace, params: dict) -> None:
    base, p = params["base"], params["train"]
    features, encoders = load_features(args.table, args.text, args.audio, classes=base.classes,
                                       audio_pooling=p.audio_pooling)
    splits = json.loads(Path(args.splits).read_text())
    folds = {f["name"]: f for f in splits["folds"]}
    name = f"fold{args.fold}"
    if name not in folds:
        raise ValueError(f"train.folds lists {args.fold}, but split.protocol {splits['protocol']} made "
                         f"{len(folds)} fold(s); set train.folds to a subset of 1..{len(folds)}")
    experiment = params["tracking"].experiment
    launch = params["distributed"]
    # Under DDP this script runs once per process; only global rank 0 opens MLflow runs and writes outputs.
    rank_zero = is_launch_rank_zero(launch)
    flat = {**flatten("base", base), **flatten("train", p),
            **{f"encoder.{m}.{k}": str(v) for m, ident in encoders.items() for k, v in ident.items()}}
    train_one(features, folds[name], modality=args.modality, classes=base.classes, out_dir=Path(args.out),
              seed=base.seed, head=p.head, **train_options(p),
              tracking={"experiment": experiment, "params": {**flat, **flatten("distributed", launch)},
                        "parent": pipeline_parent(params, args),
                        "inputs": {"table": args.table, "splits": args.splits, "text": args.text,
                                   "audio": args.audio}} if rank_zero else None,
              card={"encoders": encoders, "audio_pooling": p.audio_pooling, "sample_rate": base.sample_rate},
              distributed=launch)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["modality", "fold", "table", "splits", "text", "audio"],
              outputs=["out"])
