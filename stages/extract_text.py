"""Stage extract_text: one frozen text embedding per utterance, cached in one file."""

from __future__ import annotations

import time

import pandas as pd

from mmser.embeddings import save_embeddings
from mmser.encoders.text import TextEncoder
from mmser.params import flatten
from mmser.stage import log, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    p = params["extract_text"]
    encoder = TextEncoder(model=p.model, pooling=p.pooling, max_length=p.max_length, device=p.device,
                          batch_size=p.batch_size)
    table = pd.read_csv(args.table, keep_default_na=False)
    with stage_run("extract_text", experiment=params["tracking"].experiment, params=flatten("extract_text", p),
                   inputs={"table": args.table}) as run:
        import mlflow

        start = time.perf_counter()
        vectors = encoder.encode(table["text"].tolist())
        seconds = time.perf_counter() - start
        save_embeddings(args.out, table["id"].tolist(), list(vectors[:, None, :]), encoder.identity())
        info = {**encoder.identity(), "utterances": len(table), "seconds": round(seconds, 2),
                "device": str(encoder.device), "mlflow_run_id": run.info.run_id}
        write_json(args.info, info)
        mlflow.log_metrics({"utterances": len(table), "seconds": seconds, "dim": encoder.dim})
        log_outputs({"embeddings": args.out})
    log.info("extract_text: %d x %d in %.1f s on %s -> %s", len(table), encoder.dim, seconds, encoder.device,
             args.out)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table"], outputs=["out", "info"])
