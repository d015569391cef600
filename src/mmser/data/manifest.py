"""Any corpus through a CSV manifest: label, speaker, and path and/or text[, id, session]; other columns kept as metadata.

A corpus without transcripts (no `text` column, or empty texts) gets text ""; one without audio (no `path`
column, or an empty path) is a text-only corpus and needs an `id` column. A row that cannot be used (its file is
missing, its label or speaker is empty, its id repeats an earlier row's, it has the wrong number of fields)
costs that row, logged in the DropLog with its reason, never the run: kept + dropped = the manifest's rows.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from mmser.data.records import DropLog, Utterance, sniff_separator
from mmser.errors import InputNotFoundError, UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("label", "speaker")
INPUT_COLUMNS = ("path", "text")  # at least one: audio, transcript, or both


class ManifestError(UserError, ValueError):
    """A manifest's header is unusable; the message names the column and what is required."""


def _check_header(csv_path: Path, columns: list[str]) -> None:
    required = ", ".join(REQUIRED_COLUMNS) + " and path and/or text"
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{csv_path}: missing column '{missing[0]}'; required: {required}; "
                            f"found: {', '.join(columns) or '(no header)'}")
    if not any(c in columns for c in INPUT_COLUMNS):
        raise ManifestError(f"{csv_path}: neither a 'path' nor a 'text' column; required: {required}")
    if "path" not in columns and "id" not in columns:
        raise ManifestError(f"{csv_path}: a manifest without a 'path' column (text only) needs an 'id' column")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ManifestError(f"{csv_path}: column '{repeated[0]}' appears twice in the header")


def read_manifest(csv_path: str | Path, *, labels: dict[str, str], classes: list[str],
                  drops: DropLog) -> list[Utterance]:
    """Read a CSV manifest; map labels through `labels` (empty = labels already are class names)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputNotFoundError(f"data.manifest: CSV not found: {csv_path}")
    mapping = labels or {c: c for c in classes}
    try:
        content = csv_path.read_text(encoding="utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is not part of a name
    except UnicodeDecodeError as err:
        raise ManifestError(f"{csv_path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    lines = content.splitlines(keepends=True)
    separator = sniff_separator(lines[0] if lines else "")
    reader = csv.reader(lines, delimiter=separator)
    header = [c.strip() for c in next(reader, [])]
    _check_header(csv_path, header)
    position = {c: i for i, c in enumerate(header)}
    utterances: list[Utterance] = []
    first_row: dict[str, int] = {}
    for fields in reader:
        if not fields:  # a blank line is not a row
            continue
        row_no = reader.line_num  # the line the row ends on (1 = the header)
        row = {c: (fields[i].strip() if i < len(fields) else "") for c, i in position.items()}
        path, text = row.get("path", ""), row.get("text", "")
        utt_id = row.get("id", "") or (Path(path).with_suffix("").as_posix() if path else f"row{row_no}")
        reason, detail = _row_problem(row, fields, header, row_no, first_row.get(utt_id))
        if reason is None and not path and not text:
            reason, detail = "no_input", f"row {row_no}: neither an audio path nor a text"
        if reason is None and path:
            audio = Path(path) if Path(path).is_absolute() else csv_path.parent / path
            if not audio.is_file():
                reason, detail = "missing_audio", f"row {row_no}: {audio}"
        if reason is None and row["label"] not in mapping:
            reason, detail = f"label_{row['label']}", f"row {row_no}"
        if reason is not None:
            drops.add(utt_id, reason, detail)
            continue
        first_row[utt_id] = row_no
        meta = {k: v for k, v in row.items() if k and k not in (*REQUIRED_COLUMNS, *INPUT_COLUMNS, "session", "id")}
        utterances.append(Utterance(
            id=utt_id, path=str(audio) if path else "", text=text, label=mapping[row["label"]],
            speaker=row["speaker"], session=row.get("session", ""), meta=meta,
        ))
    log.info("manifest %s: %d utterances kept, %d dropped (%s)", csv_path, len(utterances), len(drops.entries),
             drops.counts())
    return utterances


def _row_problem(row: dict[str, str], fields: list[str], header: list[str], row_no: int,
                 first: int | None) -> tuple[str | None, str]:
    """(reason, detail) when a row cannot be used before its file is looked at, else (None, "")."""
    if len(fields) != len(header):
        return "wrong_field_count", (f"row {row_no}: {len(fields)} fields, the header has {len(header)} "
                                     "(an unquoted separator inside a value?)")
    for column in REQUIRED_COLUMNS:
        if not row[column]:
            return f"empty_{column}", f"row {row_no}"
    if first is not None:
        return "duplicate_id", f"row {row_no}: the same id as row {first}"
    return None, ""
