"""Stage split: the evaluation protocol's folds (train / validation / test utterance ids)."""

from __future__ import annotations

from mmser.data.records import read_table
from mmser.data.splits import make_folds, validation_kind
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, split = params["base"], params["split"]
    table = read_table(args.table)
    folds = make_folds(table, protocol=split.protocol, seed=base.seed, test_fraction=split.test_fraction,
                       val_fraction=split.val_fraction, val_speakers=split.val_speakers, folds=split.folds)
    with stage_run("split", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params={**flatten("base", base), **flatten("split", split)}, inputs={"table": args.table}) as run:
        write_json(args.out, {"protocol": split.protocol, "validation": validation_kind(split.protocol),
                                "mlflow_run_id": run.info.run_id, "folds": folds})
        log_outputs({"splits": args.out})
    log.info("split: %s, %d folds", split.protocol, len(folds))


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table"], outputs=["out"])
