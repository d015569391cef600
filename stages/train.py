"""Stage train (one per modality in dvc.yaml): every candidate head x weight decay on every fold, chosen on
validation, refit on all labelled data; plus the logistic-regression baseline on the same folds."""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import pandas as pd

from mmser.baseline import logistic_baseline
from mmser.distributed import is_launch_rank_zero, world_size
from mmser.errors import UserError
from mmser.features import USES, load_features, missing_modality
from mmser.parallel import beside
from mmser.params import flatten
from mmser.selection import SELECTED_BY, candidate_grid, train_modality
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.training import forks, head_options, launched, make_fabric, process_share, save_model


def _folds(splits_path: str, wanted: list[int]) -> list[dict]:
    splits = json.loads(Path(splits_path).read_text())
    folds = {int(f["name"].removeprefix("fold")): f for f in splits["folds"]}
    unknown = [k for k in wanted if k not in folds]
    if unknown:
        raise UserError(f"train.folds lists {unknown[0]}, but split.protocol {splits['protocol']} made "
                         f"{len(folds)} fold(s); set train.folds to a subset of 1..{len(folds)}")
    return [folds[k] for k in wanted]


def main(args: argparse.Namespace, params: dict) -> None:
    base, p, modality, out = params["base"], params["train"], args.modality, Path(args.out)
    features, encoders = load_features(args.table, classes=base.classes, audio_pooling=p.audio_pooling,
                                       text_path=args.text if "text" in USES[modality] else None,
                                       audio_path=args.audio if "audio" in USES[modality] else None,
                                       speaker_norm=p.speaker_norm)
    if (reason := missing_modality(features, modality)) is not None:
        log.info("train %s: skipped, %s", modality, reason)
        write_json(out / "candidates.json", {"modality": modality, "skipped": reason})
        return
    folds, launch = _folds(args.splits, p.folds), params["distributed"]
    candidates = candidate_grid(p.heads, p.weight_decay)
    fabric = make_fabric(launch)
    process_share(p.batch_size, world_size(launch))  # checked before any process is started
    train = functools.partial(launched, fabric, train_modality, features, folds, modality=modality,
                              candidates=candidates, classes=base.classes, seed=base.seed, options=head_options(p))
    if not is_launch_rank_zero(launch):  # under DDP every process trains; one writes
        train()
        return
    baseline_fit = functools.partial(logistic_baseline, features, folds, modality=modality, classes=base.classes,
                                     c_grid=p.baseline_c, class_weights=p.class_weights, seed=base.seed)
    # Where the launch forks, the baseline is fitted in a forked child while this process opens its MLflow run and
    # trains; elsewhere it follows the training.
    with beside(baseline_fit, fork=forks(fabric)) as baseline_result, \
            stage_run_for(params, args, modality, encoders) as run:
        import mlflow

        result = train()
        sweep, chosen, val_means, epochs, final = (result.sweep, result.chosen, result.val_means, result.epochs,
                                                   result.final)
        baseline, baseline_info = baseline_result()
        selection = {"candidate": chosen.name, "selected_by": SELECTED_BY, "val_ua": val_means[chosen.name],
                     "refit": {"utterances": len(features.ids), "epochs": epochs,
                               "epochs_from": "median best epoch of the chosen candidate's fold fits"}}
        card = {"encoders": encoders, "audio_pooling": p.audio_pooling, "sample_rate": base.sample_rate,
                "classes": base.classes, "modality": modality, "head": chosen.head,
                "weight_decay": chosen.weight_decay, "speaker_norm": p.speaker_norm, "selection": selection}
        for fold in folds:  # the chosen candidate's fold models (what produced its test scores)
            save_model(sweep.fits[(chosen.name, fold["name"])].model, out / fold["name"] / "model.ckpt")
            write_json(out / fold["name"] / "model.json", {**card, "fold": fold["name"], "checkpoint": "model.ckpt",
                                                            "trained_on": f"{fold['name']} training part"})
        save_model(final.model, out / "final" / "model.ckpt")
        write_json(out / "final" / "model.json", {**card, "fold": "all", "checkpoint": "model.ckpt",
                                                  "trained_on": "every labelled utterance (refit)"})
        pd.concat([sweep.predictions, baseline], ignore_index=True).to_csv(out / "predictions.csv", index=False)
        history = [{"fold": f["name"], **h} for f in folds for h in sweep.fits[(chosen.name, f["name"])].history]
        mlflow.log_metrics({f"val_ua.{c.name.replace('=', '_')}": val_means[c.name] for c in candidates})
        mlflow.set_tags({"modality": modality, "selected": chosen.name, "processes": world_size(launch)})
        _log_curves(run.info.run_id, history)
        write_json(out / "candidates.json", {"modality": modality, "processes": world_size(launch),
                                             "candidates": [c.name for c in candidates],
                                             "val_ua": val_means, "selected": selection, "fits": sweep.records,
                                             "baseline": {"name": "logreg", **baseline_info},
                                             "history": history, "mlflow_run_id": run.info.run_id})
        mlflow.log_artifact(str(out / "candidates.json"))
        mlflow.log_artifact(str(out / "final" / "model.json"), artifact_path="final")


def _log_curves(run_id: str, history: list[dict]) -> None:
    """The chosen candidate's per-epoch curves, one MLflow metric per (fold, key), in one batch per 1000."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = [Metric(f"{h['fold']}.{k}", float(v), now, int(h["epoch"])) for h in history for k, v in h.items()
               if k not in ("fold", "epoch")]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def stage_run_for(params: dict, args: argparse.Namespace, modality: str, encoders: dict):
    """This stage's one MLflow run: train params, encoder identities, input hashes."""
    from mmser.tracking import stage_run

    identity = {f"encoder.{m}.{k}": str(v) for m, ident in encoders.items() for k, v in ident.items()}
    return stage_run("train", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                     run_name=f"train {modality}", params={**flatten("base", params["base"]),
                                                           **flatten("train", params["train"]),
                                                           **flatten("distributed", params["distributed"]), **identity},
                     inputs={"table": args.table, "splits": args.splits, "text": args.text, "audio": args.audio})


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["modality", "table", "splits", "text", "audio"], outputs=["out"])
