"""Transcripts from speech with Whisper (faster-whisper, local files only), cached, and their word error rate.

Decoding is deterministic (temperature 0 only, no sampling fallback), so a cached transcript is the one a
rerun would produce. A transcript is cached per (audio file bytes, ASR identity: model and weights hash,
compute type, language, beam size, decoding options, faster-whisper version).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmser.cache import CacheStats, RecordCache, entry_key, file_hash
from mmser.data.audio import load_audio

log = logging.getLogger(__name__)

# Fixed decoding options, part of the identity: clips are short (one window), so no previous-text conditioning.
DECODING = {"temperature": 0.0, "without_timestamps": True, "condition_on_previous_text": False,
            "vad_filter": False}
MODES = ("given", "asr", "asr_if_missing")
BATCH = 16  # transcripts per cache commit: an interrupted run keeps what it finished
TEXT_COLUMNS = ["id", "text", "text_source", "language"]


class Transcriber:
    """16 kHz mono waveforms -> {"text", "language"} with one Whisper model and fixed decoding options."""

    def __init__(self, *, model: str = "packaged", language: str | None = None, beam_size: int = 1,
                 compute_type: str = "int8", device: str = "auto"):
        from mmser.encoders.whisper import load_model

        self.whisper, self._weights_sha256 = load_model(model, compute_type=compute_type, device=device)
        self.model_name, self.language, self.beam_size, self.compute_type = model, language, beam_size, compute_type

    def identity(self) -> dict:
        """What determines the transcripts (for the cache key, the model card and prediction)."""
        import faster_whisper

        return {"asr": "whisper", "model": self.model_name, "weights_sha256": self._weights_sha256[:16],
                "compute_type": self.compute_type, "language": self.language, "beam_size": self.beam_size,
                "decoding": dict(DECODING), "faster_whisper": faster_whisper.__version__}

    def transcribe(self, waves: list[np.ndarray]) -> list[dict]:
        """One {"text", "language"} per waveform; language is the one given, or the one detected for the clip."""
        out = []
        for wave in waves:
            segments, info = self.whisper.transcribe(np.asarray(wave, dtype=np.float32), language=self.language,
                                                     beam_size=self.beam_size, **DECODING)
            text = " ".join(s.text.strip() for s in segments).strip()
            out.append({"text": text, "language": info.language})
        return out


def transcriber_from_identity(identity: dict, *, device: str = "auto") -> Transcriber:
    """The Transcriber an identity (e.g. a model card's) describes; it must reproduce that identity exactly."""
    transcriber = Transcriber(model=identity["model"], language=identity.get("language"),
                              beam_size=int(identity["beam_size"]), compute_type=identity["compute_type"],
                              device=device)
    here = transcriber.identity()
    differ = sorted(k for k in identity if identity[k] != here.get(k))
    if differ:
        details = "; ".join(f"{k}: card {identity[k]!r}, here {here.get(k)!r}" for k in differ)
        raise ValueError(f"the ASR here is not the one the model was trained with ({details})")
    return transcriber


def transcribe_files(paths: list[str], transcriber: Transcriber, cache: RecordCache, *, sample_rate: int = 16000
                     ) -> tuple[list[dict], CacheStats, float]:
    """Transcripts for audio files in order (cached ones read, the rest decoded); also the audio seconds decoded."""
    identity = transcriber.identity()
    keys = [entry_key(identity, file_hash(p)) for p in paths]
    path_of = dict(zip(keys, paths))
    unique = list(dict.fromkeys(keys))
    found = cache.get_records(unique)
    missing = [k for k in unique if k not in found]
    stats = CacheStats(requested=len(keys), unique=len(unique), hits=len(found), misses=len(missing))
    log.info("transcript cache %s: %d clips, %d distinct, %d hits, %d to transcribe", cache.path, len(keys),
             len(unique), len(found), len(missing))
    audio_seconds = 0.0
    with tqdm(total=len(missing), desc="transcribe", unit="clip") as bar:
        for start in range(0, len(missing), BATCH):
            batch = missing[start:start + BATCH]
            waves = [load_audio(path_of[k], sample_rate) for k in batch]
            audio_seconds += sum(w.size for w in waves) / sample_rate
            records = transcriber.transcribe(waves)
            cache.put_records(zip(batch, records))
            found.update(zip(batch, records))
            bar.update(len(batch))
    return [found[k] for k in keys], stats, audio_seconds


def build_texts(table: pd.DataFrame, *, mode: str, transcribe: Callable[[list[str]], list[dict]] | None
                ) -> pd.DataFrame:
    """The texts table (id, text, text_source, language) for the utterance table under `mode`.

    given: the table's text (source `given`, or `none` when empty); asr: Whisper for every clip with audio;
    asr_if_missing: the given text where there is one, Whisper elsewhere. Language is empty where not known.
    """
    if mode not in MODES:
        raise ValueError(f"unknown asr.mode {mode!r}; allowed: {', '.join(MODES)}")
    given = table["text"].fillna("").astype(str).str.strip()
    has_audio = table["path"].fillna("").astype(str).str.strip() != ""
    texts = pd.DataFrame({"id": table["id"], "text": given, "text_source": np.where(given != "", "given", "none"),
                          "language": ""})
    wanted = has_audio if mode == "asr" else (has_audio & (given == "")) if mode == "asr_if_missing" else None
    if wanted is not None and wanted.any():
        if transcribe is None:
            raise ValueError(f"asr.mode {mode} needs a transcriber")
        records = transcribe(table.loc[wanted, "path"].tolist())
        texts.loc[wanted, "text"] = [r["text"] for r in records]
        texts.loc[wanted, "language"] = [r["language"] for r in records]
        texts.loc[wanted, "text_source"] = "asr"  # also where Whisper heard no words: its text is then empty
    return texts[TEXT_COLUMNS]


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict:
    """WER (jiwer) after lower-casing and removing punctuation, over pairs whose reference has words."""
    import jiwer

    normalise = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                               jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    pairs = [(r, h) for r, h in zip(references, hypotheses) if normalise(r)[0]]
    if not pairs:
        return {"wer": None, "utterances": 0}
    refs, hyps = zip(*pairs)
    out = jiwer.process_words(list(refs), list(hyps), reference_transform=normalise, hypothesis_transform=normalise)
    return {"wer": round(float(out.wer), 4), "utterances": len(pairs), "substitutions": out.substitutions,
            "deletions": out.deletions, "insertions": out.insertions, "normalisation": "lowercase, no punctuation"}

