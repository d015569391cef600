"""Stage generate_demo: write the deterministic demo corpus in the IEMOCAP_full_release layout, and its CSV view."""

from __future__ import annotations

import csv
from pathlib import Path

from mmser.data.demo import generate_demo_corpus
from mmser.data.iemocap import read_iemocap
from mmser.data.records import DropLog
from mmser.stage import log, run_stage


def main(args, params: dict) -> None:
    base, demo = params["base"], params["demo"]
    root = Path(args.out)
    counts = generate_demo_corpus(root, seed=base.seed, utterances_per_speaker=demo.utterances_per_speaker,
                                  sample_rate=base.sample_rate)
    # The same corpus as a CSV manifest: the example of the format for bringing your own corpus.
    utterances = read_iemocap(root, label_set="six", dialogs="both", drops=DropLog())
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text", "label", "speaker", "session"])
        for u in utterances:
            writer.writerow([Path(u.path).relative_to(root).as_posix(), u.text, u.meta["raw_label"], u.speaker,
                             u.session])
    log.info("demo corpus in %s: %s", root, counts)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=[], outputs=["out"])
