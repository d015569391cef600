"""IEMOCAP_full_release reader, with the label policy of the SERVER paper stated in code."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from mmser.data.records import DropLog, Utterance
from mmser.errors import InputNotFoundError, UserError

log = logging.getLogger(__name__)

# Label policies: IEMOCAP majority label -> class. Labels not listed are dropped and counted.
LABEL_SETS: dict[str, dict[str, str]] = {
    # The paper's 4 classes: excited is merged into happy; fru, sur, fea, dis, oth, xxx are dropped.
    "paper4": {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"},
    # The common 6-class set.
    "six": {"ang": "ang", "hap": "hap", "exc": "exc", "sad": "sad", "neu": "neu", "fru": "fru"},
}

# What the literature reads from the full release with the paper4 policy over both dialog kinds.
KNOWN_PAPER4_COUNTS = {
    "total": 5531,
    "session": {"Session1": 1085, "Session2": 1023, "Session3": 1151, "Session4": 1031, "Session5": 1241},
    "label": {"ang": 1103, "hap": 1636, "sad": 1084, "neu": 1708},
}

# `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`; ids with an XX speaker do not match.
_TRANSCRIPT_LINE = re.compile(r"^(?P<id>Ses\d{2}[FM]_\S+_(?P<gender>[FM])\d{3})\s+\[[^\]]*\]:\s?(?P<text>.*)$")
_ANY_ID_LINE = re.compile(r"^Ses\d{2}[FM]_\S+\s+\[")
# First line of an EmoEvaluation block: `[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, ...]`.
_EVAL_LINE = re.compile(r"^\[[\d.]+\s*-\s*[\d.]+\]\s+(?P<id>Ses\S+)\s+(?P<label>\w+)\s+\[")


def _dialog_kind(dialog: str) -> str:
    """'improvised' or 'scripted', from the dialog name."""
    return "improvised" if "_impro" in dialog else "scripted"


def read_labels(eval_dir: Path) -> dict[str, str]:
    """Majority label of every utterance in a session's EmoEvaluation folder."""
    labels: dict[str, str] = {}
    for path in sorted(eval_dir.glob("*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            match = _EVAL_LINE.match(line)
            if match:
                labels[match["id"]] = match["label"]
    return labels


def read_iemocap(root: str | Path, *, label_set: str, dialogs: str, drops: DropLog) -> list[Utterance]:
    """Read every utterance of an IEMOCAP_full_release tree; log what is left out and why."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"data.root: IEMOCAP root not found: {root}")
    sessions = sorted(p for p in root.glob("Session[0-9]*") if p.is_dir())
    if not sessions:
        raise InputNotFoundError(f"data.root: no Session1..Session5 folders under {root}; is it IEMOCAP_full_release?")
    mapping = LABEL_SETS[label_set]
    utterances: list[Utterance] = []
    skipped_lines = Counter()
    for session_dir in sessions:
        labels = read_labels(session_dir / "dialog" / "EmoEvaluation")
        for path in sorted((session_dir / "dialog" / "transcriptions").glob("*.txt")):
            dialog = path.stem
            for line in path.read_text(errors="replace").splitlines():
                match = _TRANSCRIPT_LINE.match(line.strip())
                if not match:
                    # Not an utterance (noise markers, XX speakers): counted, never an utterance.
                    skipped_lines["xx_speaker" if _ANY_ID_LINE.match(line) else "not_utterance"] += 1
                    continue
                utt_id = match["id"]
                if dialogs != "both" and _dialog_kind(dialog) != dialogs:
                    drops.add(utt_id, "dialog_kind", _dialog_kind(dialog))
                    continue
                raw_label = labels.get(utt_id)
                if raw_label is None:
                    drops.add(utt_id, "no_label")
                    continue
                if raw_label not in mapping:
                    drops.add(utt_id, f"label_{raw_label}")
                    continue
                wav = session_dir / "sentences" / "wav" / dialog / f"{utt_id}.wav"
                if not wav.is_file():
                    drops.add(utt_id, "missing_wav", str(wav))
                    continue
                utterances.append(Utterance(
                    id=utt_id, path=str(wav), text=match["text"].strip(), label=mapping[raw_label],
                    speaker=utt_id[:5] + match["gender"], session=session_dir.name,
                    meta={"dialog": dialog, "dialog_kind": _dialog_kind(dialog), "raw_label": raw_label},
                ))
    log.info("IEMOCAP %s: %d utterances kept, %d dropped, transcript lines skipped %s",
             root, len(utterances), len(drops.entries), dict(skipped_lines))
    return utterances


class CountMismatchError(UserError, ValueError):
    """An IEMOCAP tree read with the paper's policy does not give the literature's counts (a partial release?)."""


def check_paper4_counts(utterances: list[Utterance]) -> None:
    """Raise when a full-release paper4 read does not give the literature's counts, listing the differences."""
    got = {
        "total": len(utterances),
        "session": dict(Counter(u.session for u in utterances)),
        "label": dict(Counter(u.label for u in utterances)),
    }
    diffs = [f"total: expected {KNOWN_PAPER4_COUNTS['total']}, got {got['total']}"] if got["total"] != 5531 else []
    for group in ("session", "label"):
        for key, expected in KNOWN_PAPER4_COUNTS[group].items():
            if got[group].get(key, 0) != expected:
                diffs.append(f"{group} {key}: expected {expected}, got {got[group].get(key, 0)}")
    if diffs:
        raise CountMismatchError(
            "IEMOCAP counts differ from the literature's 4-class set (5531 utterances); "
            "is the release complete? Set data.check_counts: false to accept a partial tree. "
            + "; ".join(diffs)
        )
