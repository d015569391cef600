"""Stage extract_text: one frozen text embedding per utterance, computed once per (text, encoder) and cached."""

from __future__ import annotations

import time

import pandas as pd

from mmser.cache import EmbeddingCache
from mmser.embeddings import save_embeddings
from mmser.encoders.text import TextEncoder
from mmser.extract import extract_texts
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    p = params["extract_text"]
    encoder = TextEncoder(model=p.model, pooling=p.pooling, max_length=p.max_length, device=p.device,
                          batch_size=p.batch_size, precision=p.precision)
    table = pd.read_csv(args.table, keep_default_na=False)
    with stage_run("extract_text", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params=flatten("extract_text", p),
                   inputs={"table": args.table}) as run, EmbeddingCache() as cache:
        import mlflow

        start = time.perf_counter()
        vectors, stats = extract_texts(table["text"].tolist(), encoder, cache)
        seconds = time.perf_counter() - start
        save_embeddings(args.out, table["id"].tolist(), vectors, encoder.identity())
        info = {**encoder.identity(), "utterances": len(table), "seconds": round(seconds, 2),
                "device": str(encoder.device), **stats.as_metrics(), "mlflow_run_id": run.info.run_id}
        write_json(args.info, info)
        mlflow.log_metrics({"utterances": len(table), "seconds": seconds, "dim": encoder.dim, **stats.as_metrics()})
        log_outputs({"embeddings": args.out})
    log.info("extract_text: %d x %d in %.1f s on %s (cache: %d hits, %d computed) -> %s", len(table), encoder.dim,
             seconds, encoder.device, stats.hits, stats.misses, args.out)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table"], outputs=["out", "info"])
