"""Stage train: one head per (modality, fold) on cached embeddings; best validation-UA checkpoint kept."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mmser.features import load_features
from mmser.params import flatten
from mmser.stage import log, run_stage, write_json
from mmser.training import train_one


def main(args, params: dict) -> None:
    base, p = params["base"], params["train"]
    features, encoders = load_features(args.table, args.text, args.audio, classes=base.classes,
                                       audio_pooling=p.audio_pooling)
    folds = json.loads(Path(args.splits).read_text())["folds"]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = {**flatten("base", base), **flatten("train", p),
            **{f"encoder.{m}.{k}": str(v) for m, ident in encoders.items() for k, v in ident.items()}}
    head_kwargs = dict(text_proj_dim=p.text_proj_dim, hidden_dim=p.hidden_dim, dropout=p.dropout, lr=p.lr,
                       step_size=p.step_size, gamma=p.gamma)
    records, history = [], []
    bar = tqdm(total=len(p.modalities) * len(folds) * p.epochs, desc="train", unit="epoch", mininterval=1.0)
    for modality in p.modalities:
        for fold in folds:
            result = train_one(features, fold, modality=modality, bar=bar, classes=base.classes, out_dir=out_dir,
                               seed=base.seed, head_kwargs=head_kwargs, epochs=p.epochs, batch_size=p.batch_size,
                               standardize=p.standardize, experiment=params["tracking"].experiment, params=flat,
                               inputs={"table": args.table, "splits": args.splits, "text": args.text,
                                       "audio": args.audio},
                               card={"encoders": encoders, "audio_pooling": p.audio_pooling,
                                     "sample_rate": base.sample_rate})
            records.append(result["record"])
            history.extend(result["history"])
    bar.close()
    pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
    write_json(out_dir / "runs.json", {"classes": base.classes, "encoders": encoders, "runs": records})
    log.info("train: %d runs -> %s", len(records), out_dir)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table", "splits", "text", "audio"], outputs=["out"])
