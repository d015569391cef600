"""The model card beside each checkpoint (classes, modality, encoders) and how a model is addressed.

Both are read without torch or MLflow: `mmser predict` checks its command line against the model's inputs
before anything heavy is imported.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mmser.errors import InputNotFoundError, UserError

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
# What each modality's head takes: a transcript (`text`), an audio file (`audio_path`), or both.
MODALITY_INPUTS = {"text": ["text"], "audio": ["audio_path"], "fusion": ["text", "audio_path"]}


class ModelMismatchError(UserError, RuntimeError):
    """The checkpoint, its card and the encoders rebuilt from the card do not describe the same model."""


def card_path(checkpoint: str | Path) -> Path:
    """The model card written beside a checkpoint (`models/fusion/fold1/model.ckpt` -> `.../model.json`)."""
    return Path(checkpoint).with_suffix(".json")


def read_card(path: str | Path) -> dict:
    """A model card, checked for the keys prediction needs."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"model card {path} not found; the train stage writes it beside each checkpoint")
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelMismatchError(f"model card {path} is not JSON ({err})") from None
    missing = [k for k in ("classes", "modality", "encoders", "audio_pooling", "sample_rate") if k not in card]
    if missing:
        raise ModelMismatchError(f"model card {path} lacks {', '.join(missing)}")
    if card["modality"] not in MODALITY_INPUTS:
        raise ModelMismatchError(f"model card {path}: unknown modality {card['modality']!r}")
    return card


def is_mlflow_uri(model: str) -> bool:
    """True for `runs:/…`, `models:/…` and `mlflow-artifacts:/…` URIs."""
    return str(model).startswith(MLFLOW_SCHEMES)


def model_modality(model: str, tracking_uri: str) -> str | None:
    """The modality of `model` (text, audio, fusion), when it can be read cheaply: from the card beside a checkpoint, the card in an
    MLflow model folder, or the `modality` tag of a registered `models:/<name>@<alias>` in a SQLite store.

    None when finding out needs MLflow itself (a server, `runs:/` URIs): the loaded model is checked then.
    """
    if is_mlflow_uri(model):
        modality = _registered_tag(model, tracking_uri, "modality")
        return modality if modality in MODALITY_INPUTS else None
    path = Path(model)
    if path.is_dir() and (path / "MLmodel").is_file():
        return None  # its card is inside the logged artifacts: read by MLflow when it loads
    if path.is_dir():
        path = path / "model.ckpt"
    if not path.is_file():
        raise InputNotFoundError(f"--model: checkpoint {path} not found (a checkpoint, its folder, an MLflow model "
                                 "folder or URI)")
    return read_card(card_path(path))["modality"]


def model_transcribes(model: str, tracking_uri: str) -> bool | None:
    """Whether `model` was trained on ASR transcripts (its card's text encoder records an `asr`), from the card
    beside a checkpoint or the `transcribes` tag of a registered model; None when only MLflow can tell."""
    if is_mlflow_uri(model):
        tag = _registered_tag(model, tracking_uri, "transcribes")
        return None if tag is None else tag == "true"
    path = Path(model)
    if path.is_dir() and (path / "MLmodel").is_file():
        return None
    path = path / "model.ckpt" if path.is_dir() else path
    return bool(read_card(card_path(path))["encoders"].get("text", {}).get("asr"))


def _registered_tag(model: str, tracking_uri: str, key: str) -> str | None:
    """The `key` tag of `models:/<name>@<alias>` in a SQLite MLflow store, read with sqlite3 (MLflow takes
    seconds to import); None when the URI or store is another kind. A missing store or alias is the user's."""
    if not (model.startswith("models:/") and "@" in model and tracking_uri.startswith("sqlite:///")):
        return None
    name, alias = model[len("models:/"):].split("@", 1)
    store = Path(tracking_uri[len("sqlite:///"):])
    if not store.is_file():
        raise InputNotFoundError(f"no MLflow store at {store}, so no {model}: run `make repro` in the repository "
                                 "(its evaluate stage registers the best model), or give --model")
    try:
        with sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT t.value FROM registered_model_aliases a LEFT JOIN model_version_tags t ON t.name = a.name "
                "AND t.version = a.version AND t.key = ? WHERE a.name = ? AND a.alias = ?",
                (key, name, alias)).fetchall()
    except sqlite3.Error:  # another schema: MLflow finds out when it loads the model
        return None
    if not rows:
        raise UserError(f"{model} is not registered in {store}: run `make repro` (its evaluate stage registers the "
                        "best model), or give --model")
    return rows[0][0]
