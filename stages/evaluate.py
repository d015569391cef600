"""Stage evaluate: test-set UA / WA / macro-F1 per modality and fold, intervals, plots, predictions, MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from mmser.evaluation import fold_predictions, results_markdown, summarise, write_reports
from mmser.features import load_features
from mmser.params import flatten
from mmser.pyfunc import register_best
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, evaluate, train = params["base"], params["evaluate"], params["train"]
    classes = base.classes
    features, _ = load_features(args.table, args.text, args.audio, classes=classes, audio_pooling=train.audio_pooling)
    splits = json.loads(Path(args.splits).read_text())
    tests = {f["name"]: f["test"] for f in splits["folds"]}
    # Exactly the (modality, fold) pairs of the current params: stale folders of earlier settings are ignored.
    runs = [json.loads((Path(args.models) / m / f"fold{k}" / "run.json").read_text())
            for m in train.modalities for k in train.folds]
    if len(train.folds) < len(tests):
        log.warning("evaluating %d of the %d folds of split.protocol %s (train.folds)", len(train.folds), len(tests),
                    splits["protocol"])
    predictions = pd.concat([fold_predictions(str(Path(args.models) / r["modality"] / r["fold"] / "model.ckpt"),
                                              features, tests[r["fold"]], modality=r["modality"],
                                              label=r["modality"], fold=r["fold"], classes=classes)
                             for r in runs], ignore_index=True)
    summary = summarise(predictions, classes, resamples=evaluate.bootstrap_resamples, seed=base.seed)
    history = pd.concat([pd.read_csv(Path(args.models) / r["modality"] / r["fold"] / "history.csv").assign(
        modality=r["modality"], fold=r["fold"]) for r in runs], ignore_index=True)
    reports = Path(args.reports)
    write_reports(predictions, summary, history, classes, reports)
    corpus = params["data"].source
    (reports / "results.md").write_text(results_markdown(summary, corpus=corpus, protocol=splits["protocol"]))

    parent = pipeline_parent(params, args)
    with stage_run("evaluate", experiment=params["tracking"].experiment, parent=parent,
                   params={**flatten("evaluate", evaluate), "data.source": corpus, "split.protocol": splits["protocol"]},
                   inputs={"table": args.table, "splits": args.splits}) as run:
        import mlflow

        client = mlflow.tracking.MlflowClient()
        for r in runs:  # the test scores also land on each training run, so runs compare in mlflow ui
            fold_scores = summary[r["modality"]]["per_fold"][r["fold"]]
            for key in ("ua", "wa", "macro_f1"):
                client.log_metric(r["run_id"], f"test_{key}", fold_scores[key])
        aggregate = {f"{m}_{k}": summary[m][k] for m in ("text", "audio", "fusion") if m in summary
                     for k in ("ua", "wa", "macro_f1")}
        mlflow.log_metrics(aggregate)
        summary["mlflow"] = {"parent_run_id": parent, "evaluate_run_id": run.info.run_id,
                             "train_run_ids": {f"{r['modality']}/{r['fold']}": r["run_id"] for r in runs}}
        if not os.environ.get("DVC_EXP_NAME"):  # the default configuration registers; experiments do not
            summary["mlflow"]["registered"] = register_best(
                [{**r, "checkpoint": Path(args.models) / r["modality"] / r["fold"] / "model.ckpt"} for r in runs],
                registered_name="mmser", alias="best", experiment=params["tracking"].experiment)
        write_json(args.metrics, {"corpus": corpus, "protocol": splits["protocol"], "head": train.head, **summary})
        mlflow.log_artifact(args.metrics)
        for key, value in aggregate.items():  # the pipeline's parent run carries the aggregate and the summary
            client.log_metric(parent, key, value)
        client.log_artifact(parent, args.metrics)
        mlflow.log_artifacts(str(reports / "plots"), artifact_path="plots")
        mlflow.log_artifacts(str(reports / "predictions"), artifact_path="predictions")
        log_outputs({"summary": args.metrics})
    for modality in ("text", "audio", "fusion"):
        if modality in summary:
            s = summary[modality]
            log.info("evaluate %s: UA %.3f ± %.3f  WA %.3f ± %.3f", modality, s["ua"], s["ua_std"], s["wa"], s["wa_std"])


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table", "splits", "text", "audio", "models"],
              outputs=["metrics", "reports"])
