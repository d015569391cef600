"""Emotion predictions for new clips and transcripts from a trained head, embedding exactly as training did.

A model is a checkpoint plus its card (`<checkpoint stem>.json` beside it, written by the train stage): the
card names the encoders that made the training embeddings. They are rebuilt from it, and a rebuilt encoder
whose identity differs from the card's (another model, dimension, pooling or VGGish weights hash) is an
error, never a silent wrong answer. Other code computing the embeddings or other library versions
(`code_sha256`, `libraries`) is a warning: the encoder is the same, its numbers may differ slightly, and
refusing would break every served model at each library upgrade. Bad input (a missing or undecodable file,
empty text) fails only its row.
A model trained on ASR transcripts has its ASR in the card (the text encoder's `asr`): a row without text is
transcribed from its audio with that same ASR, and every row returns the transcript it used.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from mmser.card import ModelMismatchError, card_path, is_mlflow_uri, read_card
from mmser.data.audio import read_checked
from mmser.embeddings import audio_inputs
from mmser.encoders.identity import ENVIRONMENT_KEYS, embedding_identity
from mmser.errors import InputNotFoundError
from mmser.extract import build_audio_encoder
from mmser.models.module import EmotionClassifier

log = logging.getLogger(__name__)

CHUNK = 64  # rows embedded together; bounds the waveforms held in memory at once


# Numerical precision changes embeddings by rounding only (e.g. fp16 on a GPU at extraction, bf16 or fp32 on a CPU
# here), and the code or library versions of the same encoder by a fix or an upgrade: reported, not refused.
_WARN_ONLY = {"precision", *ENVIRONMENT_KEYS}
_PRECISION_ARG = {"fp32": "fp32", "bf16": "bf16", "fp16": "auto"}  # fp16 is what `auto` gives on CUDA


def _check_identity(kind: str, expected: dict, rebuilt: dict) -> None:
    """The rebuilt encoder must be the one that made the training embeddings, for every key the card records."""
    differ = sorted(k for k in expected if expected[k] != rebuilt.get(k))
    hard = [k for k in differ if k not in _WARN_ONLY]
    if hard:
        details = "; ".join(f"{k}: card {expected.get(k)!r}, here {rebuilt.get(k)!r}" for k in hard)
        raise ModelMismatchError(f"the {kind} encoder here is not the one the model was trained with ({details})")
    for key in differ:
        if key == "libraries":
            card, here = expected[key] or {}, rebuilt.get(key) or {}
            changed = {name: (card.get(name), here.get(name)) for name in sorted(set(card) | set(here))
                       if card.get(name) != here.get(name)}
            log.warning("%s encoder: library versions differ from the training embeddings' (card, here): %s; "
                        "predictions may differ slightly", kind, changed)
        elif key == "code_sha256":
            log.warning("%s encoder: the code computing its embeddings changed since training (code_sha256 card "
                        "%s, here %s); predictions may differ from what the model was trained on: retrain to be "
                        "sure", kind, expected[key], rebuilt.get(key))
        else:
            log.warning("%s encoder %s: card %r, here %r (rounding differences only)", kind, key, expected[key],
                        rebuilt.get(key))
    unrecorded = sorted(set(rebuilt) - set(expected))
    if unrecorded:  # a card written before the encoder reported these: they cannot be checked
        log.warning("the model card does not record the %s encoder's %s; not checked", kind, ", ".join(unrecorded))


def _build_text_encoder(ident: dict, device: str):
    """The text encoder a card's identity describes."""
    from mmser.encoders.text import TextEncoder

    return TextEncoder(model=ident["model"], pooling=ident["pooling"], max_length=int(ident["max_length"]),
                       device=device, precision=_PRECISION_ARG.get(ident.get("precision"), "auto"))


def _build_audio_encoder(ident: dict, *, sample_rate: int, vggish_weights_dir: str | None, device: str):
    """The audio encoder a card's identity describes (egemaps, vggish, ssl)."""
    return build_audio_encoder(encoder=ident["encoder"], sample_rate=sample_rate,
                               vggish_weights_dir=vggish_weights_dir, postprocess=ident.get("postprocess", True),
                               device=device, precision=_PRECISION_ARG.get(ident.get("precision"), "auto"),
                               ssl_model=ident.get("model"), ssl_layer=ident.get("layer", "last"),
                               whisper_model=ident.get("model", "packaged"),
                               whisper_pooling=ident.get("pooling", "mean"),
                               whisper_compute_type=ident.get("compute_type", "float32"))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


class Predictor:
    """A trained head with the encoders its card names: rows of text and/or audio path -> label, probabilities."""

    def __init__(self, checkpoint: str | Path, card: dict, *, vggish_weights_dir: str | None = None,
                 device: str = "cpu"):
        self.model = EmotionClassifier.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
        hp = self.model.hparams
        self.card, self.classes, self.modality = card, list(card["classes"]), card["modality"]
        self.audio_pooling, self.sample_rate = card["audio_pooling"], int(card["sample_rate"])
        if list(hp["classes"]) != self.classes:
            raise ModelMismatchError(f"checkpoint classes {list(hp['classes'])} differ from the card's {self.classes}")
        if card.get("speaker_norm"):  # its inputs were z-scored per speaker: one clip has no speaker statistics
            raise ModelMismatchError("this model was trained with train.speaker_norm (inputs standardised per "
                                     "speaker); mmser predict does not normalise per speaker yet: deploy a model "
                                     "trained with speaker_norm: false")
        self.uses_text, self.uses_audio = bool(hp["text_dim"]), bool(hp["audio_dim"])
        expected = {"text": (True, False), "audio": (False, True), "fusion": (True, True)}.get(self.modality)
        if expected != (self.uses_text, self.uses_audio):
            raise ModelMismatchError(f"card says modality {self.modality!r}, the checkpoint takes "
                                     f"text_dim={hp['text_dim']}, audio_dim={hp['audio_dim']}")
        self.text_encoder = self.audio_encoder = self.transcriber = None
        if self.uses_text:
            ident = dict(card["encoders"]["text"])
            asr = ident.pop("asr", None)  # what made the training texts, not part of the text encoder
            self.text_encoder = _build_text_encoder(ident, device)
            _check_identity("text", ident, embedding_identity(self.text_encoder))
            self._check_dim("text", self.text_encoder.dim, hp["text_dim"])
            if asr:
                from mmser.asr import transcriber_from_identity

                self.transcriber = transcriber_from_identity(asr, device=device)
        if self.uses_audio:
            ident = card["encoders"]["audio"]
            self.audio_encoder = _build_audio_encoder(ident, sample_rate=self.sample_rate,
                                                      vggish_weights_dir=vggish_weights_dir, device=device)
            _check_identity("audio", ident, embedding_identity(self.audio_encoder, sample_rate=self.sample_rate))
            self._check_dim("audio", self.audio_encoder.dim, hp["audio_dim"])

    @staticmethod
    def _check_dim(kind: str, encoder_dim: int, head_dim: int) -> None:
        if int(encoder_dim) != int(head_dim):
            raise ModelMismatchError(f"the {kind} encoder gives {encoder_dim}-d vectors, the head takes {head_dim}")

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, card: str | Path | None = None,
                        vggish_weights_dir: str | None = None) -> "Predictor":
        """A predictor from a checkpoint and its card (by default the `.json` beside it)."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise InputNotFoundError(f"checkpoint {checkpoint} not found")
        return cls(checkpoint, read_card(card or card_path(checkpoint)), vggish_weights_dir=vggish_weights_dir)

    @property
    def inputs(self) -> list[str]:
        """The inputs this model takes: `text` and/or `audio_path` (both when it transcribes a missing text)."""
        uses_audio = self.uses_audio or self.transcribes
        return [name for name, used in (("text", self.uses_text), ("audio_path", uses_audio)) if used]

    @property
    def transcribes(self) -> bool:
        """Whether a row without text is transcribed from its audio (the model was trained on ASR text)."""
        return self.transcriber is not None

    def predict(self, rows: list[dict]) -> list[dict]:
        """Per row ({"text": ..., "audio_path": ...}): {"label", "probs" (class -> probability), "transcript", "error"}.

        A row that cannot be embedded gets label and probs None and the reason in `error`; the others go on.
        """
        out: list[dict] = []
        for start in range(0, len(rows), CHUNK):
            out.extend(self._predict_chunk(rows[start:start + CHUNK]))
        return out

    def _predict_chunk(self, rows: list[dict]) -> list[dict]:
        errors: list[str | None] = [None] * len(rows)
        texts = [None if _missing(row.get("text")) else str(row["text"]) for row in rows]
        waves: dict[int, np.ndarray] = {}
        to_transcribe: dict[int, np.ndarray] = {}
        for i, row in enumerate(rows):
            needs_asr = self.uses_text and texts[i] is None
            if needs_asr and not self.transcribes:
                errors[i] = "empty text"  # trained on given transcripts: no ASR in its card to make one
            elif self.uses_audio or needs_asr:
                errors[i], wave = self._read_audio(row.get("audio_path"))
                if wave is not None and self.uses_audio:
                    waves[i] = wave
                if wave is not None and needs_asr:
                    to_transcribe[i] = wave
        if to_transcribe:
            for i, record in zip(to_transcribe, self.transcriber.transcribe(list(to_transcribe.values()))):
                texts[i] = record["text"]
                if not record["text"]:
                    errors[i] = "the ASR heard no words in the audio"
        ok = [i for i in range(len(rows)) if errors[i] is None]
        audio, lengths = self._embed_audio([waves[i] for i in ok], ok, errors) if self.uses_audio else (None, None)
        ok_after = [i for i in ok if errors[i] is None]
        if audio is not None:
            keep = [ok.index(i) for i in ok_after]
            audio, lengths = audio[keep], lengths[keep]
        text = None
        if self.uses_text and ok_after:
            text = torch.from_numpy(self.text_encoder.encode([texts[i] for i in ok_after], progress=False))
        probs = self.model.predict_proba(text, audio, lengths) if ok_after else np.zeros((0, len(self.classes)))
        used = texts if self.uses_text else [None] * len(rows)
        results = [{"label": None, "probs": None, "transcript": t, "error": e} for t, e in zip(used, errors)]
        for i, p in zip(ok_after, probs):
            if not np.isfinite(p).all():
                results[i]["error"] = "non-finite probabilities (embedding out of range)"
                continue
            results[i] = {"label": self.classes[int(p.argmax())],
                          "probs": {c: float(v) for c, v in zip(self.classes, p)}, "transcript": used[i], "error": None}
        return results

    def _read_audio(self, path) -> tuple[str | None, np.ndarray | None]:
        """(error, waveform): decoded at the card's sample rate, or why the file cannot be used."""
        if _missing(path):
            return "no audio path", None
        if not Path(str(path)).is_file():
            return f"audio file not found: {path}", None
        problem, wave = read_checked(str(path), self.sample_rate)
        return (f"audio {problem}", None) if problem else (None, wave)

    def _embed_audio(self, waves: list[np.ndarray], ids: list[int],
                     errors: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio, frame counts) for `waves`, pooled as in training (or padded frames for attention pooling);
        a clip the encoder rejects gets an error, the others go on."""
        if not waves:
            return torch.zeros(0, int(self.model.hparams["audio_dim"])), torch.zeros(0, dtype=torch.int64)
        try:
            frames = self.audio_encoder.encode(waves)
        except Exception:  # isolate the failing clip: encode one by one
            frames = []
            for i, wave in zip(ids, waves):
                try:
                    frames.extend(self.audio_encoder.encode([wave]))
                except Exception as err:  # encoders raise several types on odd signals
                    errors[i] = f"audio encoder failed: {type(err).__name__}: {err}".replace("\n", " ")
                    frames.append(np.full((1, self.audio_encoder.dim), np.nan, dtype=np.float32))
        values, lengths = audio_inputs(frames, self.audio_pooling)
        return torch.from_numpy(values), torch.from_numpy(lengths)


def predictions_frame(results: list[dict], classes: list[str]):
    """Predictor results as a DataFrame: label, p_<class> per class, transcript (the text used), error; missing
    values are null, not NaN.

    Nullable columns keep an error row's label and probabilities null (and a good row's error), so that the
    served model's JSON says `null` where NaN would not be JSON at all.
    """
    import pandas as pd

    return pd.DataFrame({
        "label": pd.Series([r["label"] for r in results], dtype=object),
        **{f"p_{c}": pd.array([r["probs"][c] if r["probs"] else None for r in results], dtype="Float64")
           for c in classes},
        "transcript": pd.Series([r.get("transcript") for r in results], dtype=object),
        "error": pd.Series([r["error"] for r in results], dtype=object),
    })


def load_predictor(model: str, *, vggish_weights_dir: str | None = None) -> Predictor:
    """A predictor from a checkpoint path, an MLflow pyfunc model (URI or local folder) or a logged checkpoint.

    `runs:/<id>/model/model.ckpt` (a checkpoint artifact) downloads the checkpoint and the card beside it.
    """
    config = {"vggish_weights_dir": vggish_weights_dir}
    if is_mlflow_uri(model):
        import mlflow

        from mmser.tracking import tracking_uri

        uri = tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # do not create one
            raise InputNotFoundError(f"no MLflow store at {uri}: run from the repository root or set "
                                    "MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        if model.endswith(".ckpt"):
            checkpoint = mlflow.artifacts.download_artifacts(artifact_uri=model)
            card = mlflow.artifacts.download_artifacts(artifact_uri=model[: -len(".ckpt")] + ".json")
            return Predictor.from_checkpoint(checkpoint, card=card, vggish_weights_dir=vggish_weights_dir)
        return mlflow.pyfunc.load_model(model, model_config=config).unwrap_python_model().predictor
    path = Path(model)
    if path.is_dir() and (path / "MLmodel").is_file():
        import mlflow

        return mlflow.pyfunc.load_model(str(path), model_config=config).unwrap_python_model().predictor
    if path.is_dir() and (path / "model.ckpt").is_file():
        path = path / "model.ckpt"
    return Predictor.from_checkpoint(path, vggish_weights_dir=vggish_weights_dir)
