"""Stage evaluate: test UA / WA / macro-F1 of each modality's chosen candidate beside the logistic baseline,
the comparison of every candidate, intervals, paired tests, plots; registers the deployable model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from mmser.evaluation import candidates_table, selected_frames, summarise, versus, write_reports, results_markdown
from mmser.data.records import read_table
from mmser.errors import UserError
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run

MODALITIES = ("text", "audio", "fusion")


def read_predictions(path: Path) -> pd.DataFrame:
    """A train stage's predictions: text columns as written (ids such as 0001), the rest as numbers."""
    frame = read_table(path)
    numeric = [c for c in frame.columns if c.startswith("p_") or c.endswith("_idx")]
    return frame.astype({c: float for c in numeric}).astype({c: int for c in numeric if c.endswith("_idx")})


def _load(models: Path) -> tuple[dict, dict]:
    """Per trained modality: its candidates.json record and its predictions (skipped modalities say why)."""
    records, predictions = {}, {}
    for modality in MODALITIES:
        record = json.loads((models / modality / "candidates.json").read_text())
        if "skipped" in record:
            log.info("evaluate: %s skipped (%s)", modality, record["skipped"])
            continue
        records[modality] = record
        predictions[modality] = read_predictions(models / modality / "predictions.csv")
    if not records:
        raise UserError("no modality was trained: the corpus has neither text nor audio inputs")
    return records, predictions


def main(args, params: dict) -> None:
    base, evaluate = params["base"], params["evaluate"]
    classes, models, seed = base.classes, Path(args.models), base.seed
    records, raw = _load(models)
    frames = {label: f for m, r in records.items()
              for label, f in selected_frames(m, raw[m], r["selected"]["candidate"]).items()}
    predictions = pd.concat(frames.values(), ignore_index=True)
    summary = summarise(predictions, classes, resamples=evaluate.bootstrap_resamples, seed=seed)
    results = {m: summary[m] for m in records}
    if "fusion_vs_best_unimodal" in summary:
        results["fusion_vs_best_unimodal"] = summary["fusion_vs_best_unimodal"]
    for m, r in records.items():
        results[m]["candidate"] = r["selected"]["candidate"]
        results[m]["val_ua"] = r["selected"]["val_ua"]
        results[f"{m}_baseline"] = {**summary[f"{m}/logreg"], "C": r["baseline"]["C"],
                                    "vs_chosen": versus(predictions, m, f"{m}/logreg", summary, len(classes),
                                                        resamples=evaluate.bootstrap_resamples, seed=seed)}
        for fold, absent in summary[m]["classes_absent_from_test"].items():
            log.warning("%s %s: test part has no %s; its UA averages the classes present", m, fold, absent)
    table = [row for m, r in records.items() for row in candidates_table(m, r, summary)]
    reports = Path(args.reports)
    history = pd.DataFrame([{**h, "modality": m} for m, r in records.items() for h in r["history"]])
    write_reports(predictions[predictions["modality"].isin(records)], summary, history, classes, reports)
    splits = json.loads(Path(args.splits).read_text())
    corpus, protocol = params["data"].source, splits["protocol"]
    header = {"corpus": corpus, "protocol": protocol, "validation": splits.get("validation", "")}
    (reports / "results.md").write_text(results_markdown(results, corpus=corpus, protocol=protocol))

    parent = pipeline_parent(params, args)
    with stage_run("evaluate", experiment=params["tracking"].experiment, parent=parent,
                   params={**flatten("evaluate", evaluate), "data.source": corpus, "split.protocol": protocol},
                   inputs={"table": args.table, "splits": args.splits}) as run:
        import mlflow

        client = mlflow.tracking.MlflowClient()
        aggregate = {f"{m}_{k}": results[m][k] for m in records for k in ("ua", "wa", "macro_f1")}
        aggregate.update({f"{m}_baseline_ua": results[f"{m}_baseline"]["ua"] for m in records})
        mlflow.log_metrics(aggregate)
        for m, r in records.items():  # the test scores also land on each train run, so runs compare in mlflow ui
            client.log_metric(r["mlflow_run_id"], "test_ua", results[m]["ua"])
        results["mlflow"] = {"parent_run_id": parent, "evaluate_run_id": run.info.run_id,
                             "train_run_ids": {m: r["mlflow_run_id"] for m, r in records.items()}}
        if not os.environ.get("DVC_EXP_NAME"):  # the default configuration registers; experiments do not
            from mmser.pyfunc import register_best

            results["mlflow"]["registered"] = register_best(records, models, registered_name="mmser", alias="best",
                                                            experiment=params["tracking"].experiment)
        write_json(args.metrics, {**header, **results})
        write_json(args.candidates, {**header, "selected_by": next(iter(records.values()))["selected"]["selected_by"],
                                     "candidates": table})
        for path in (args.metrics, args.candidates):
            mlflow.log_artifact(path)
            client.log_artifact(parent, path)
        for key, value in aggregate.items():  # the pipeline's parent run carries the aggregate and the summary
            client.log_metric(parent, key, value)
        mlflow.log_artifacts(str(reports / "plots"), artifact_path="plots")
        log_outputs({"summary": args.metrics, "candidates": args.candidates})
    for m in records:
        s, b = results[m], results[f"{m}_baseline"]
        log.info("evaluate %s (%s): UA %.3f ± %.3f, WA %.3f; logreg baseline UA %.3f", m, s["candidate"], s["ua"],
                 s["ua_std"], s["wa"], b["ua"])


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table", "splits", "models"],
              outputs=["metrics", "candidates", "reports"])
