"""Stage extract_audio: frozen audio embeddings (per-utterance frames) for every utterance, in one file."""

from __future__ import annotations

import time

import pandas as pd

from mmser.embeddings import save_embeddings
from mmser.extract import build_audio_encoder, encode_audio
from mmser.params import flatten
from mmser.stage import log, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, p = params["base"], params["extract_audio"]
    encoder = build_audio_encoder(encoder=p.encoder, sample_rate=base.sample_rate,
                                  vggish_weights_dir=p.vggish_weights_dir, postprocess=p.postprocess,
                                  batch_size=p.batch_size, device=p.device)
    table = pd.read_csv(args.table, keep_default_na=False)
    with stage_run("extract_audio", experiment=params["tracking"].experiment,
                   params={"base.sample_rate": str(base.sample_rate), **flatten("extract_audio", p)},
                   inputs={"table": args.table}) as run:
        import mlflow

        start = time.perf_counter()
        vectors = encode_audio(table["path"].tolist(), encoder, sample_rate=base.sample_rate)
        seconds = time.perf_counter() - start
        save_embeddings(args.out, table["id"].tolist(), vectors, encoder.identity())
        frames = sum(v.shape[0] for v in vectors)
        info = {**encoder.identity(), "utterances": len(table), "frames": frames, "seconds": round(seconds, 2),
                "mlflow_run_id": run.info.run_id}
        write_json(args.info, info)
        mlflow.log_metrics({"utterances": len(table), "frames": frames, "seconds": seconds, "dim": encoder.dim})
        log_outputs({"embeddings": args.out})
    log.info("extract_audio: %d utterances, %d frames x %d in %.1f s -> %s", len(table), frames, encoder.dim,
             seconds, args.out)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table"], outputs=["out", "info"])
