"""From a corpus (demo, IEMOCAP or CSV manifest) to the utterance table and a report that accounts for every row."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mmser.data.audio import audio_problem
from mmser.data.iemocap import LABEL_SETS, check_paper4_counts, read_iemocap
from mmser.data.manifest import read_manifest
from mmser.data.records import DropLog, Utterance
from mmser.params import ParamsError

log = logging.getLogger(__name__)

COLUMNS = ["id", "path", "text", "label", "speaker", "session", "duration", "padded"]


def read_corpus(*, source: str, root: str, manifest: str, label_set: str, dialogs: str,
                labels: dict[str, str], classes: list[str], check_counts: bool,
                drops: DropLog) -> list[Utterance]:
    """Read the configured corpus into utterance records (label policy applied, drops logged)."""
    if source in ("demo", "iemocap"):
        targets = sorted(set(LABEL_SETS[label_set].values()))
        if sorted(classes) != targets:
            raise ParamsError(f"base.classes {classes} do not match data.label_set '{label_set}' classes {targets}")
        utterances = read_iemocap(root, label_set=label_set, dialogs=dialogs, drops=drops)
        if source == "iemocap" and check_counts and label_set == "paper4" and dialogs == "both":
            check_paper4_counts(utterances)
        return utterances
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise ParamsError(f"data.labels maps to '{unknown[0]}', which is not in base.classes {classes}")
    return read_manifest(manifest, labels=labels, classes=classes, drops=drops)


def check_audio(utterances: list[Utterance], *, short_clips: str, min_duration: float,
                drops: DropLog) -> pd.DataFrame:
    """Decode every file once: drop unusable ones with their reason (and path), apply the short-clip policy.

    A text-only utterance (no audio path) is kept without a check: its duration is empty and it is never padded.
    """
    rows = []
    for utt in tqdm(utterances, desc="prepare: checking audio", unit="utt"):
        if not utt.path:
            rows.append({**_row(utt), "duration": None, "padded": False})
            continue
        problem, duration = audio_problem(utt.path)
        if problem is not None:
            drops.add(utt.id, problem.split(":")[0], f"{utt.path}: {problem}")
            continue
        short = duration < min_duration
        if short and short_clips == "drop":
            drops.add(utt.id, "short", f"{duration:.3f}s < {min_duration}s")
            continue
        rows.append({**_row(utt), "duration": round(duration, 4), "padded": short})
    bad = {r: n for r, n in drops.counts().items()
           if r in ("undecodable", "truncated", "empty", "silent", "non_finite_samples")}
    if bad:
        log.warning("dropped %d unusable audio files: %s (details in the prepare report)", sum(bad.values()), bad)
    return pd.DataFrame(rows, columns=COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS)))


def _row(utt: Utterance) -> dict:
    """The table columns an utterance brings itself (everything but duration and padded)."""
    return {"id": utt.id, "path": utt.path, "text": utt.text, "label": utt.label, "speaker": utt.speaker,
            "session": utt.session, **{f"meta_{k}": v for k, v in utt.meta.items()}}


def build_report(table: pd.DataFrame, drops: DropLog, *, n_input: int, classes: list[str]) -> dict:
    """Counts by class, session and speaker, and every dropped utterance with its reason."""
    missing = [c for c in classes if c not in set(table["label"])]
    if missing:
        log.warning("classes with no utterance after preparation: %s", missing)
    return {
        "input_utterances": n_input,
        "kept": len(table),
        "dropped": len(drops.entries),
        "padded_short": int(table["padded"].sum()) if len(table) else 0,
        # Kept utterances without audio (a text-only corpus) or without a transcript (text "").
        "without_audio": int((table["path"] == "").sum()),
        "without_text": int((table["text"] == "").sum()),
        "by_class": {c: int((table["label"] == c).sum()) for c in classes},
        "by_session": dict(sorted(Counter(table["session"]).items())),
        "by_speaker": dict(sorted(Counter(table["speaker"]).items())),
        "dropped_by_reason": drops.counts(),
        "dropped_utterances": drops.entries,
    }


def relative_to_cwd(path: str) -> str:
    """Paths inside the repository are stored relative to it, so `dvc exp` temp copies resolve them too."""
    if not path:  # no audio (a text-only utterance)
        return ""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.as_posix()
