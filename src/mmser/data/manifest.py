"""Any corpus through a CSV manifest: path, text, label, speaker[, session]; other columns kept as metadata."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from mmser.data.records import DropLog, Utterance

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "text", "label", "speaker")


class ManifestError(ValueError):
    """A manifest row or column is unusable; the message names the row and the column."""


def read_manifest(csv_path: str | Path, *, labels: dict[str, str], classes: list[str],
                  drops: DropLog) -> list[Utterance]:
    """Read a CSV manifest; map labels through `labels` (empty = labels already are class names)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data.manifest: CSV not found: {csv_path}")
    mapping = labels or {c: c for c in classes}
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(f"{csv_path}: missing column '{missing[0]}'; required: {', '.join(REQUIRED_COLUMNS)}")
        utterances: list[Utterance] = []
        seen: set[str] = set()
        for row_no, row in enumerate(reader, start=2):  # line 1 is the header
            for column in REQUIRED_COLUMNS:
                if not (row.get(column) or "").strip():
                    raise ManifestError(f"{csv_path}: row {row_no}: empty required column '{column}'")
            audio = Path(row["path"].strip())
            audio = audio if audio.is_absolute() else csv_path.parent / audio
            if not audio.is_file():
                raise ManifestError(f"{csv_path}: row {row_no}: column 'path': file does not exist: {audio}")
            utt_id = (row.get("id") or "").strip() or Path(row["path"].strip()).with_suffix("").as_posix()
            if utt_id in seen:
                raise ManifestError(f"{csv_path}: row {row_no}: duplicate utterance id '{utt_id}'")
            seen.add(utt_id)
            raw_label = row["label"].strip()
            if raw_label not in mapping:
                drops.add(utt_id, f"label_{raw_label}")
                continue
            meta = {k: v for k, v in row.items() if k not in (*REQUIRED_COLUMNS, "session", "id") and k}
            utterances.append(Utterance(
                id=utt_id, path=str(audio), text=row["text"].strip(), label=mapping[raw_label],
                speaker=row["speaker"].strip(), session=(row.get("session") or "").strip(), meta=meta,
            ))
    log.info("manifest %s: %d utterances kept, %d dropped", csv_path, len(utterances), len(drops.entries))
    return utterances
