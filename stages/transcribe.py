"""Stage transcribe: the text of every utterance (given, or Whisper's transcript), where it came from, and the WER."""

from __future__ import annotations

import time
from pathlib import Path


from mmser.asr import Transcriber, build_texts, transcribe_files, word_error_rate
from mmser.cache import RecordCache
from mmser.data.records import read_table
from mmser.params import flatten
from mmser.stage import log, pipeline_parent, run_stage, write_json
from mmser.tracking import log_outputs, stage_run


def main(args, params: dict) -> None:
    base, p = params["base"], params["asr"]
    table = read_table(args.table)
    # mode given never loads Whisper (nor imports faster-whisper): a copy of the table's text.
    transcriber = None if p.mode == "given" else Transcriber(model=p.model, language=p.language,
                                                             beam_size=p.beam_size, compute_type=p.compute_type,
                                                             device=p.device)
    with stage_run("transcribe", experiment=params["tracking"].experiment, parent=pipeline_parent(params, args),
                   params={"base.sample_rate": str(base.sample_rate), **flatten("asr", p)},
                   inputs={"table": args.table}) as run, RecordCache() as cache:
        import mlflow

        found = {}

        def transcribe(paths: list[str]) -> list[dict]:
            records, stats, audio_seconds = transcribe_files(paths, transcriber, cache, sample_rate=base.sample_rate)
            found.update(stats.as_metrics(), audio_seconds=audio_seconds)
            return records

        start = time.perf_counter()
        texts = build_texts(table, mode=p.mode, transcribe=transcribe if transcriber else None)
        seconds = time.perf_counter() - start
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        texts.to_csv(args.out, index=False)
        asr_rows = texts["text_source"].eq("asr")
        reference = table["text"].astype(str).str.strip()
        wer = word_error_rate(reference[asr_rows].tolist(), texts.loc[asr_rows, "text"].tolist())
        audio_seconds = found.get("audio_seconds", 0.0)
        report = {"mode": p.mode, "utterances": len(texts),
                  "by_source": {k: int(v) for k, v in texts["text_source"].value_counts().items()},
                  "empty_text": int(texts["text"].eq("").sum()),
                  "languages": {k: int(v) for k, v in texts.loc[asr_rows, "language"].value_counts().items()},
                  "asr": transcriber.identity() if transcriber is not None and asr_rows.any() else None,
                  "wer_vs_given": wer, "seconds": round(seconds, 2),
                  "real_time_factor": round(seconds / audio_seconds, 4) if audio_seconds else None,
                  **{k: v for k, v in found.items() if k != "audio_seconds"}, "mlflow_run_id": run.info.run_id}
        write_json(args.report, report)
        metrics = {"utterances": len(texts), "seconds": seconds,
                   **{f"source_{k}": v for k, v in report["by_source"].items()}}
        if wer["wer"] is not None:
            metrics["wer"] = wer["wer"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(args.report)
        log_outputs({"texts": args.out})
    log.info("transcribe (%s): %d utterances by source %s; WER vs given %s (%d pairs) in %.1f s -> %s", p.mode,
             len(texts), report["by_source"], wer["wer"], wer["utterances"], seconds, args.out)


if __name__ == "__main__":
    run_stage(main, description=__doc__, inputs=["table"], outputs=["out", "report"])
