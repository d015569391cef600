"""Stage generate_demo: write the deterministic demo corpus in the IEMOCAP_full_release layout, and its CSV view."""

from __future__ import annotations

import csv
from pathlib import Path

from mmser.data.demo import generate_demo_corpus
from mmser.data.iemocap import read_iemocap
from mmser.data.records import DropLog
from mmser.stage import log, pipeline_parent, run_stage
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, demo = params["base"], params["demo"]
    if params["data"].source != "demo":
        log.warning("generating the demo corpus although data.source is %s; set demo.build: [] so that dvc repro "
                    "does not build it", params["data"].source)
    with stage_run("generate_demo", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params={"base.seed": str(base.seed), "base.sample_rate": str(base.sample_rate),
                           "demo.utterances_per_speaker": str(demo.utterances_per_speaker)}, inputs={}):
        import mlflow

        counts = write_demo(Path(args.out), seed=base.seed, utterances_per_speaker=demo.utterances_per_speaker,
                            sample_rate=base.sample_rate)
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        log_outputs({"corpus": args.out, "manifest": Path(args.out) / "manifest.csv"})
    log.info("demo corpus in %s: %s", args.out, counts)


def write_demo(root: Path, *, seed: int, utterances_per_speaker: int, sample_rate: int) -> dict[str, int]:
    """The corpus in the IEMOCAP layout under `root`, and its CSV manifest; returns the generator's counts."""
    counts = generate_demo_corpus(root, seed=seed, utterances_per_speaker=utterances_per_speaker,
                                  sample_rate=sample_rate)
    # The same corpus as a CSV manifest: the example of the format for bringing your own corpus.
    utterances = read_iemocap(root, label_set="six", dialogs="both", drops=DropLog())
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text", "label", "speaker", "session"])
        for u in utterances:
            writer.writerow([Path(u.path).relative_to(root).as_posix(), u.text, u.meta["raw_label"], u.speaker,
                             u.session])
    return counts


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=[], outputs=["out"])
