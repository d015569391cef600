"""Stage extract_audio: frozen audio embeddings (per-utterance frames) for every utterance, cached, in one file."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from mmser.cache import EmbeddingCache
from mmser.data.records import read_table
from mmser.distributed import encoder_device, is_launch_rank_zero, world_size
from mmser.embeddings import save_embeddings
from mmser.encoders.identity import embedding_identity
from mmser.extract import build_audio_encoder, extract_audio, extract_audio_share, sharding_for
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, p, dist = params["base"], params["extract_audio"], params["distributed"]
    make_encoder = partial(build_audio_encoder, encoder=p.encoder, sample_rate=base.sample_rate,
                           vggish_weights_dir=p.vggish_weights_dir, postprocess=p.postprocess,
                           batch_size=p.batch_size, precision=p.precision, ssl_model=p.ssl_model,
                           ssl_layer=p.ssl_layer, whisper_model=p.whisper_model, whisper_pooling=p.whisper_pooling,
                           whisper_compute_type=p.whisper_compute_type,
                           egemaps_processes=None if dist.strategy == "single" else 1)
    encoder = make_encoder(device=encoder_device(dist, p.device))
    sharding = sharding_for(dist, make_encoder, scratch=Path(args.out).parent)
    if sharding is not None and not is_launch_rank_zero(dist):  # a process Lightning added: its share, nothing else
        extract_audio_share(encoder, sharding, sample_rate=base.sample_rate, workers=p.workers)
        return
    table = read_table(args.table)
    table = table[table["path"].str.strip() != ""]  # rows without audio (a text-only corpus) get no embedding
    with stage_run("extract_audio", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params={"base.sample_rate": str(base.sample_rate), **flatten("extract_audio", p)},
                   inputs={"table": args.table}) as run, EmbeddingCache() as cache:
        import mlflow

        start = time.perf_counter()
        vectors, stats = extract_audio(table["path"].tolist(), encoder, cache, sample_rate=base.sample_rate,
                                       workers=p.workers, sharding=sharding)
        seconds = time.perf_counter() - start
        identity = embedding_identity(encoder, sample_rate=base.sample_rate)  # what the cache keys hold
        save_embeddings(args.out, table["id"].tolist(), vectors, identity)
        frames = sum(v.shape[0] for v in vectors)
        processes = world_size(dist) if sharding else 1
        info = {**identity, "utterances": len(table), "frames": frames, "seconds": round(seconds, 2),
                "processes": processes, **stats.as_metrics(), "mlflow_run_id": run.info.run_id}
        write_json(args.info, info)
        mlflow.log_metrics({"utterances": len(table), "frames": frames, "seconds": seconds, "dim": encoder.dim,
                            "processes": processes, **stats.as_metrics()})
        log_outputs({"embeddings": args.out})
    log.info("extract_audio: %d utterances, %d frames x %d in %.1f s x %d processes, %s (cache: %d hits, %d computed)"
             " -> %s", len(table), frames, encoder.dim, seconds, processes, identity.get("precision", "fp32"),
             stats.hits, stats.misses, args.out)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table"], outputs=["out", "info"])
