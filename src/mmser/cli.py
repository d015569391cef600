"""The `mmser` command: `mmser predict` labels new clips and transcripts with a trained model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("mmser")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmser", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="predict the emotion of a clip and/or transcript",
        description="Predict with a trained model: one input (--audio/--text) prints one JSON object; "
                    "--csv (columns path, text) writes one row per input with label, probabilities and error.")
    predict.add_argument("--model", required=True,
                         help="checkpoint (its .json card beside it), MLflow model folder, or MLflow URI "
                              "(runs:/<id>/pyfunc, models:/<name>/<version>, models:/<name>@best)")
    predict.add_argument("--audio", help="audio file (WAV/FLAC, any rate; audio and fusion models)")
    predict.add_argument("--text", help="transcript (text and fusion models)")
    predict.add_argument("--csv", help="manifest with columns path (relative to the CSV's folder, or absolute) "
                                       "and/or text; other columns are copied to the output")
    predict.add_argument("--out", help="output CSV for --csv (default: stdout)")
    predict.add_argument("--vggish-weights-dir", help="VGGish weights folder (default: $TORCH_HOME/hub/checkpoints)")
    return parser


def _needs(predictor) -> str:
    names = {"text": "--text", "audio_path": "--audio"}
    joiner = " or " if predictor.transcribes and not predictor.uses_audio else " and "  # ASR makes the text
    return joiner.join(names[i] for i in predictor.inputs)


def _predict_one(predictor, args: argparse.Namespace) -> int:
    given = {"text": args.text is not None, "audio_path": args.audio is not None}
    missing = [i for i in predictor.inputs if not given[i]]
    if predictor.transcribes and given["audio_path"]:  # a model trained on ASR text transcribes the clip itself
        missing = [i for i in missing if i != "text"]
    if missing:
        raise ValueError(f"this {predictor.modality} model needs {_needs(predictor)}")
    for name, flag in (("text", "--text"), ("audio_path", "--audio")):
        if given[name] and name not in predictor.inputs:
            log.warning("%s ignored: this %s model does not use it", flag, predictor.modality)
    [result] = predictor.predict([{"text": args.text, "audio_path": args.audio}])
    if result["error"]:
        raise ValueError(result["error"])
    transcript = {"transcript": result["transcript"]} if predictor.transcribes else {}  # the text the ASR made
    print(json.dumps({"label": result["label"], "probs": result["probs"], **transcript}))
    return 0


def _predict_csv(predictor, args: argparse.Namespace) -> int:
    import pandas as pd

    from mmser.predict import predictions_frame

    manifest = Path(args.csv)
    table = pd.read_csv(manifest, keep_default_na=False, dtype=str)
    columns = {"text": "text", "audio_path": "path"}
    absent = [columns[i] for i in predictor.inputs if columns[i] not in table.columns]
    if predictor.transcribes and "path" in table.columns:  # texts missing from the manifest are transcribed
        absent = [c for c in absent if c != "text"]
    if absent:
        raise ValueError(f"{manifest}: this {predictor.modality} model needs column(s) {', '.join(absent)}; "
                         f"found {', '.join(table.columns)}")
    rows = []
    for record in table.to_dict("records"):
        path = record.get("path", "")
        rows.append({"text": record.get("text"),
                     "audio_path": str(manifest.parent / path) if path else None})  # absolute paths stay absolute
    predictions = predictions_frame(predictor.predict(rows), predictor.classes)
    # An input column named like an output (e.g. the manifest's true `label`) is kept as input_<name>.
    table = table.rename(columns={c: f"input_{c}" for c in predictions.columns if c in table.columns})
    result = pd.concat([table, predictions], axis=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(args.out, index=False)
    else:
        result.to_csv(sys.stdout, index=False)
    failed = int(result["error"].notna().sum())
    print(f"mmser predict: {len(result)} rows, {failed} failed (see the error column)"
          + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def predict(args: argparse.Namespace) -> int:
    """Run `mmser predict`; returns the exit status."""
    single = args.audio is not None or args.text is not None
    if single == bool(args.csv):
        raise ValueError("give either --audio/--text (one input) or --csv (many)")
    if args.out and not args.csv:
        raise ValueError("--out goes with --csv")
    from mmser.predict import load_predictor

    predictor = load_predictor(args.model, vggish_weights_dir=args.vggish_weights_dir)
    return _predict_csv(predictor, args) if args.csv else _predict_one(predictor, args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mmser` console script."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # prediction never downloads; fail at once, not after retries
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr stays for what matters
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        return predict(args)
    except Exception as err:  # one clear line for the user; the traceback only with MMSER_DEBUG=1
        if os.environ.get("MMSER_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if not isinstance(err, _user_errors()):
            message = f"{type(err).__name__}: {message}"
        print(f"mmser predict: error: {message}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message alone tells the user what to fix."""
    from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError
    from mmser.predict import ModelMismatchError

    errors: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, KeyError, ModelMismatchError,
                                           MissingWeightsError, InvalidWeightsError)
    try:
        from mlflow.exceptions import MlflowException

        errors += (MlflowException,)
    except ImportError:
        pass
    return errors


if __name__ == "__main__":
    sys.exit(main())
