"""Stage prepare: corpus (demo, IEMOCAP or CSV manifest) -> utterance table + report of every dropped utterance."""

from __future__ import annotations

from pathlib import Path

from mmser.data.prepare import build_report, check_audio, read_corpus, relative_to_cwd
from mmser.data.records import DropLog
from mmser.errors import UserError
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, data = params["base"], params["data"]
    drops = DropLog()
    utterances = read_corpus(source=data.source, root=args.root, manifest=args.manifest, label_set=data.label_set,
                             dialogs=data.dialogs, labels=data.labels, classes=base.classes,
                             check_counts=data.check_counts, drops=drops)
    n_input = len(utterances) + len(drops.entries)
    table = check_audio(utterances, short_clips=data.short_clips, min_duration=data.min_duration, drops=drops)
    if table.empty:
        raise UserError(f"no usable utterance in the corpus ({n_input} read); see the drop reasons: {drops.counts()}")
    table["path"] = table["path"].map(relative_to_cwd)
    report = build_report(table, drops, n_input=n_input, classes=base.classes)
    with stage_run("prepare", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params={**flatten("base", base), **flatten("data", data)},
                   inputs={"manifest": args.manifest}) as run:
        import mlflow

        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.table, index=False)
        write_json(args.report, {**report, "mlflow_run_id": run.info.run_id})
        mlflow.log_metrics({"kept": report["kept"], "dropped": report["dropped"],
                            "padded_short": report["padded_short"], "input_utterances": n_input})
        mlflow.log_artifact(args.report)
        log_outputs({"table": args.table})
    log.info("prepare: %d of %d utterances kept; by class %s; dropped %s", report["kept"], n_input,
             report["by_class"], report["dropped_by_reason"])


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["root", "manifest"], outputs=["table", "report"])
