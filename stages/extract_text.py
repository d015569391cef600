"""Stage extract_text: one frozen text embedding per utterance with text, computed once per (text, encoder), cached.

Texts come from the transcribe stage (given or ASR); the ASR that made them joins the encoder identity in the
embedding file, so a model trained on them records it in its card and prediction transcribes the same way.
Utterances without text get no embedding: a corpus without transcripts gives a file with no rows.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from mmser.cache import EmbeddingCache
from mmser.data.records import read_table
from mmser.distributed import encoder_device, is_launch_rank_zero, world_size
from mmser.embeddings import save_embeddings
from mmser.encoders.identity import embedding_identity
from mmser.encoders.text import TextEncoder
from mmser.extract import extract_texts, extract_texts_share, sharding_for
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    p, dist = params["extract_text"], params["distributed"]
    make_encoder = partial(TextEncoder, model=p.model, pooling=p.pooling, max_length=p.max_length,
                           batch_size=p.batch_size, precision=p.precision)
    encoder = make_encoder(device=encoder_device(dist, p.device))
    sharding = sharding_for(dist, make_encoder, scratch=Path(args.out).parent)
    if sharding is not None and not is_launch_rank_zero(dist):  # a process Lightning added: its share, nothing else
        extract_texts_share(encoder, sharding)
        return
    texts = read_table(args.texts)
    without_text = int((texts["text"].str.strip() == "").sum())
    table = texts[texts["text"].str.strip() != ""]
    asr = json.loads(Path(args.texts_report).read_text()).get("asr")
    with stage_run("extract_text", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params=flatten("extract_text", p),
                   inputs={"texts": args.texts}) as run, EmbeddingCache() as cache:
        import mlflow

        start = time.perf_counter()
        vectors, stats = extract_texts(table["text"].tolist(), encoder, cache, sharding=sharding)
        seconds = time.perf_counter() - start
        # What the cache keys hold, plus the ASR that made the texts (it reaches the model card).
        identity = {**embedding_identity(encoder), **({"asr": asr} if asr else {})}
        save_embeddings(args.out, table["id"].tolist(), vectors, identity)
        processes = world_size(dist) if sharding else 1
        info = {**identity, "utterances": len(table), "without_text": without_text, "seconds": round(seconds, 2),
                "device": str(encoder.device), "processes": processes, **stats.as_metrics(),
                "mlflow_run_id": run.info.run_id}
        write_json(args.info, info)
        mlflow.log_metrics({"utterances": len(table), "without_text": without_text, "seconds": seconds,
                            "dim": encoder.dim, "processes": processes, **stats.as_metrics()})
        log_outputs({"embeddings": args.out})
    log.info("extract_text: %d x %d (%d without text) in %.1f s on %s x %d, %s (cache: %d hits, %d computed) -> %s",
             len(table), encoder.dim, without_text, seconds, encoder.device, processes, identity["precision"],
             stats.hits, stats.misses, args.out)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["texts", "texts-report"], outputs=["out", "info"])
