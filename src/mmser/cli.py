"""The `mmser` command: `mmser predict` labels new clips and transcripts with a trained model.

Arguments and inputs are checked before torch or MLflow is imported (they take seconds to load): a missing
file, an input the model does not get, or an unreadable CSV is reported at once, in one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mmser.errors import InputNotFoundError, UserError, one_line

log = logging.getLogger("mmser")

DEFAULT_MODEL = "models:/mmser@best"  # what the evaluate stage registers (chosen on validation)
INPUT_FLAGS = {"text": "--text", "audio_path": "--audio"}
CSV_COLUMNS = {"text": "text", "audio_path": "path"}
# MLflow's error codes for a model URI that names nothing (its other errors are failures, with a traceback).
MLFLOW_REFUSALS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmser", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="predict the emotion of a clip and/or transcript",
        description="Predict with a trained model: one input (--audio/--text) prints one JSON object; "
                    "--csv (columns path, text) writes one row per input with label, probabilities and error.")
    predict.add_argument("--model", default=DEFAULT_MODEL,
                         help="checkpoint (its .json card beside it), MLflow model folder, or MLflow URI "
                              "(runs:/<id>/pyfunc, models:/<name>/<version>, models:/<name>@best); default: "
                              f"{DEFAULT_MODEL}, the best model `make repro` registered in the repository's store")
    predict.add_argument("--audio", help="audio file (WAV, FLAC, MP3, OGG; any rate and channels; audio and fusion models)")
    predict.add_argument("--text", help="transcript (text and fusion models)")
    predict.add_argument("--csv", help="manifest with columns path (relative to the CSV's folder, or absolute) "
                                       "and/or text; other columns are copied to the output")
    predict.add_argument("--out", help="output CSV for --csv (default: stdout)")
    predict.add_argument("--vggish-weights-dir", help="VGGish weights folder (default: $TORCH_HOME/hub/checkpoints)")
    return parser


def check_arguments(args: argparse.Namespace) -> list[str] | None:
    """The `--csv` header (None without --csv); UserError for arguments and input files that cannot work, whatever
    the model. Imports neither torch nor MLflow."""
    single = args.audio is not None or args.text is not None
    if single == bool(args.csv):
        raise UserError("give either --audio/--text (one input) or --csv (many)")
    if args.out and not args.csv:
        raise UserError("--out goes with --csv")
    if args.text is not None and not args.text.strip():
        raise UserError("--text is empty")
    if args.audio is not None:
        if not Path(args.audio).is_file():
            raise InputNotFoundError(f"--audio: file not found: {args.audio}")
        from mmser.data.audio import header_problem

        if (problem := header_problem(args.audio)) is not None:
            raise UserError(f"--audio {args.audio}: {problem}")
    return csv_columns(args.csv) if args.csv else None


def csv_columns(path: str) -> list[str]:
    """The header of a `--csv` manifest; UserError when it is missing, not UTF-8 text, or has no path/text column."""
    import csv

    from mmser.data.records import sniff_separator

    if not Path(path).is_file():
        raise InputNotFoundError(f"--csv: file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            separator = sniff_separator(f.readline())
            f.seek(0)  # the utf-8-sig decoder skips the BOM again
            reader = csv.reader(f, delimiter=separator)
            header = next(reader, [])
            for fields in reader:  # the rows pandas would refuse, found before the model loads
                if fields and len(fields) != len(header):
                    raise UserError(f"--csv {path}: line {reader.line_num} has {len(fields)} fields, the header "
                                    f"{len(header)} (an unquoted separator inside a value?)")
    except UnicodeDecodeError as err:
        raise UserError(f"--csv {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    columns = [c.strip() for c in header]
    if not set(columns) & set(CSV_COLUMNS.values()):
        raise UserError(f"--csv {path}: needs a 'path' and/or 'text' column; found "
                        f"{', '.join(columns) or 'no header (empty file)'}")
    return columns


def check_model_inputs(inputs: list[str], modality: str, args: argparse.Namespace,
                       columns: list[str] | None, transcribes: bool = False) -> None:
    """Raise UserError when the command line lacks an input the model takes (`--text` for a fusion model; a model
    trained on ASR transcripts makes the text from `--audio` itself)."""
    from mmser.card import MODALITY_INPUTS

    if args.csv:
        absent = [CSV_COLUMNS[i] for i in inputs if CSV_COLUMNS[i] not in (columns or [])]
        if transcribes and "path" in (columns or []):  # texts missing from the manifest are transcribed
            absent = [c for c in absent if c != "text"]
        if absent:
            raise UserError(f"{args.csv}: this {modality} model needs column(s) {', '.join(absent)}; "
                            f"found {', '.join(columns or [])}")
        return
    given = {"text": args.text is not None, "audio_path": args.audio is not None}
    missing = [i for i in inputs if not given[i]]
    if transcribes and given["audio_path"]:
        missing = [i for i in missing if i != "text"]
    if missing:
        joiner = " or " if transcribes and "audio_path" not in MODALITY_INPUTS[modality] else " and "
        raise UserError(f"this {modality} model needs {joiner.join(INPUT_FLAGS[i] for i in inputs)}")
    for name, flag in INPUT_FLAGS.items():
        if given[name] and name not in inputs:
            log.warning("%s ignored: this %s model does not use it", flag, modality)


def _predict_one(predictor, args: argparse.Namespace) -> int:
    [result] = predictor.predict([{"text": args.text, "audio_path": args.audio}])
    if result["error"]:
        raise UserError(result["error"])
    transcript = {"transcript": result["transcript"]} if predictor.transcribes else {}  # the text the ASR made
    print(json.dumps({"label": result["label"], "probs": result["probs"], **transcript}))
    return 0


def _predict_csv(predictor, args: argparse.Namespace) -> int:
    import pandas as pd

    from mmser.data.records import read_table
    from mmser.predict import predictions_frame

    manifest = Path(args.csv)
    try:
        table = read_table(manifest)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"--csv {manifest}: not a readable CSV: {' '.join(str(err).split())}") from None
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
    from mmser.card import MODALITY_INPUTS, model_modality, model_transcribes
    from mmser.tracking import tracking_uri

    columns = check_arguments(args)
    modality = model_modality(args.model, tracking_uri())  # None: known only once MLflow has loaded the model
    transcribes = model_transcribes(args.model, tracking_uri())  # None: likewise
    if modality is not None and transcribes is not None:
        check_model_inputs(MODALITY_INPUTS[modality], modality, args, columns, transcribes)
    _quiet_transformers()
    from mmser.predict import load_predictor

    predictor = load_predictor(args.model, vggish_weights_dir=args.vggish_weights_dir)
    check_model_inputs(predictor.inputs, predictor.modality, args, columns, predictor.transcribes)
    return _predict_csv(predictor, args) if args.csv else _predict_one(predictor, args)


def _quiet_transformers() -> None:
    """No progress bars or notices from transformers on stderr (it is imported with the text encoder)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    """`mmser` with these arguments (default: sys.argv): its exit status. console() runs it as the command."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # prediction never downloads; fail at once, not after retries
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr stays for what matters
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return predict(args)
    except Exception as err:  # bad input is one line; anything else is a bug and keeps its traceback
        if not _is_user_error(err):
            raise
        print(f"mmser predict: error: {one_line(err)}", file=sys.stderr)
        return 1


def console() -> None:
    """The `mmser` console script: main, then exit_now (no teardown of torch and MLflow's modules: a second)."""
    from mmser.process import exit_now

    exit_now(main())


def _is_user_error(err: Exception) -> bool:
    """Whether the message alone tells the user what to fix: mmser's UserError, or MLflow refusing a model URI
    (an unknown run, model, version or alias)."""
    if isinstance(err, UserError):
        return True
    exceptions = sys.modules.get("mlflow.exceptions")  # only when MLflow was imported, never to find out
    return (exceptions is not None and isinstance(err, exceptions.MlflowException)
            and err.error_code in MLFLOW_REFUSALS)


if __name__ == "__main__":
    console()
