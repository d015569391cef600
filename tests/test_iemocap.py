"""IEMOCAP reader on a hand-built tree in the release's formats: kept ids, labels, speakers and drop reasons."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmser.data.demo import generate_demo_corpus
from mmser.data.iemocap import KNOWN_PAPER4_COUNTS, check_paper4_counts, read_iemocap
from mmser.data.records import DropLog, Utterance

EMOEVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"

# (utterance id, start, end, text, majority label or None for no EmoEvaluation block, write a wav?)
DIALOGS: dict[str, dict[str, list[tuple[str, float, float, str, str | None, bool]]]] = {
    "Session1": {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", 6.2901, 8.2357, "Excuse me.", "neu", True),
            ("Ses01F_impro01_M000", 8.9, 10.5, "Yeah, it's great!", "exc", True),
            ("Ses01F_impro01_F001", 11.0, 13.2, "Why won't this work?", "fru", True),
            ("Ses01F_impro01_M001", 13.5, 14.9, "Hmm.", "xxx", True),
            ("Ses01F_impro01_F002", 15.0, 16.8, "Nobody rated this one.", None, True),
            ("Ses01F_impro01_M002", 17.0, 18.4, "Get out!", "ang", False),
        ],
        "Ses01M_script01_1": [
            ("Ses01M_script01_1_F000", 2.0, 4.1, "I miss him.", "sad", True),
            ("Ses01M_script01_1_M000", 4.5, 6.0, "That's wonderful news.", "hap", True),
        ],
    },
    "Session2": {
        "Ses02F_impro02": [
            ("Ses02F_impro02_F000", 1.0, 2.5, "How dare you!", "ang", True),
            ("Ses02F_impro02_M000", 3.0, 4.5, "Okay, I'll see you then.", "neu", True),
        ],
    },
}
# Lines a reader must skip: a noise marker, and a turn by an unidentified (XX) speaker.
EXTRA_TRANSCRIPT_LINES = {
    "Ses01F_impro01": ["M: [LAUGHTER]", "Ses01F_impro01_MXX0 [019.0000-020.0000]: Mm-hmm."],
}


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.1 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)


def _block(utt_id: str, start: float, end: float, label: str) -> str:
    names = {"neu": "Neutral", "exc": "Excited", "fru": "Frustration", "xxx": "Other", "ang": "Anger",
             "sad": "Sadness", "hap": "Happiness"}
    head = f"[{start:.4f} - {end:.4f}]\t{utt_id}\t{label}\t[2.5000, 2.5000, 2.5000]"
    votes = [f"C-E{k}:\t{names[label]};\t()" for k in (1, 2, 4)]
    return "\n".join([head, *votes, "A-E3:\tval 3; act 2; dom  3;\t()"]) + "\n"


def build_tree(root: Path) -> Path:
    """A small IEMOCAP_full_release tree, written line by line in the release's formats."""
    for session, dialogs in DIALOGS.items():
        trans_dir = root / session / "dialog" / "transcriptions"
        eval_dir = root / session / "dialog" / "EmoEvaluation"
        trans_dir.mkdir(parents=True)
        eval_dir.mkdir(parents=True)
        # The release keeps per-evaluator files in subfolders; only the top-level files hold majority labels.
        (eval_dir / "Categorical").mkdir()
        for dialog, turns in dialogs.items():
            lines = [f"{u} [{s:08.4f}-{e:08.4f}]: {text}" for u, s, e, text, _, _ in turns]
            extra = EXTRA_TRANSCRIPT_LINES.get(dialog, [])
            lines = lines[:2] + extra + lines[2:]
            (trans_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
            blocks = [_block(u, s, e, lab) for u, s, e, _, lab, _ in turns if lab is not None]
            (eval_dir / f"{dialog}.txt").write_text(EMOEVAL_HEADER + "\n\n" + "\n".join(blocks) + "\n")
            (eval_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
                "\n".join(f"{u} :Anger; ()" for u, *_ in turns) + "\n")
            wav_dir = root / session / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True)
            for u, s, e, _, _, has_wav in turns:
                if has_wav:
                    sf.write(wav_dir / f"{u}.wav", _tone(e - s), 16000, subtype="PCM_16")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "IEMOCAP_full_release")


def _by_id(utterances: list[Utterance]) -> dict[str, Utterance]:
    return {u.id: u for u in utterances}


def test_paper4_both_dialogs(tree: Path) -> None:
    drops = DropLog()
    utts = _by_id(read_iemocap(tree, label_set="paper4", dialogs="both", drops=drops))
    assert sorted(utts) == [
        "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01M_script01_1_F000", "Ses01M_script01_1_M000",
        "Ses02F_impro02_F000", "Ses02F_impro02_M000",
    ]
    assert {k: u.label for k, u in utts.items()} == {
        "Ses01F_impro01_F000": "neu",
        "Ses01F_impro01_M000": "hap",  # exc merged into hap
        "Ses01M_script01_1_F000": "sad",
        "Ses01M_script01_1_M000": "hap",
        "Ses02F_impro02_F000": "ang",
        "Ses02F_impro02_M000": "neu",
    }
    # The speaker is the actor of the turn (final F/M of the id), not the one who wore the markers.
    assert {k: u.speaker for k, u in utts.items()} == {
        "Ses01F_impro01_F000": "Ses01F",
        "Ses01F_impro01_M000": "Ses01M",
        "Ses01M_script01_1_F000": "Ses01F",
        "Ses01M_script01_1_M000": "Ses01M",
        "Ses02F_impro02_F000": "Ses02F",
        "Ses02F_impro02_M000": "Ses02M",
    }
    assert {k: u.session for k, u in utts.items()} == {
        k: ("Session1" if k.startswith("Ses01") else "Session2") for k in utts}
    first = utts["Ses01F_impro01_F000"]
    assert first.text == "Excuse me."
    assert first.path == str(tree / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav")
    assert first.meta == {"dialog": "Ses01F_impro01", "dialog_kind": "improvised", "raw_label": "neu"}
    assert utts["Ses01F_impro01_M000"].meta["raw_label"] == "exc"
    assert utts["Ses01M_script01_1_M000"].meta["dialog_kind"] == "scripted"

    reasons = {e["id"]: e["reason"] for e in drops.entries}
    assert reasons == {
        "Ses01F_impro01_F001": "label_fru",
        "Ses01F_impro01_M001": "label_xxx",
        "Ses01F_impro01_F002": "no_label",
        "Ses01F_impro01_M002": "missing_wav",
    }
    missing = next(e for e in drops.entries if e["reason"] == "missing_wav")
    assert missing["detail"].endswith("Ses01F_impro01_M002.wav")
    # Noise markers and XX turns are not utterances: neither kept nor in the drop log.
    assert not any("XX" in e["id"] for e in drops.entries)
    assert not any("XX" in k for k in utts)


def test_six_class_keeps_exc_and_fru(tree: Path) -> None:
    drops = DropLog()
    utts = _by_id(read_iemocap(tree, label_set="six", dialogs="both", drops=drops))
    assert utts["Ses01F_impro01_M000"].label == "exc"
    assert utts["Ses01F_impro01_F001"].label == "fru"
    assert utts["Ses01F_impro01_F001"].speaker == "Ses01F"
    assert len(utts) == 7
    assert drops.counts() == {"label_xxx": 1, "missing_wav": 1, "no_label": 1}


def test_improvised_only(tree: Path) -> None:
    drops = DropLog()
    utts = _by_id(read_iemocap(tree, label_set="paper4", dialogs="improvised", drops=drops))
    assert sorted(utts) == ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses02F_impro02_F000",
                            "Ses02F_impro02_M000"]
    assert all(u.meta["dialog_kind"] == "improvised" for u in utts.values())
    kind_drops = [e for e in drops.entries if e["reason"] == "dialog_kind"]
    assert sorted(e["id"] for e in kind_drops) == ["Ses01M_script01_1_F000", "Ses01M_script01_1_M000"]
    assert {e["detail"] for e in kind_drops} == {"scripted"}
    assert drops.counts() == {"dialog_kind": 2, "label_fru": 1, "label_xxx": 1, "missing_wav": 1, "no_label": 1}


def test_scripted_only(tree: Path) -> None:
    drops = DropLog()
    utts = _by_id(read_iemocap(tree, label_set="paper4", dialogs="scripted", drops=drops))
    assert sorted(utts) == ["Ses01M_script01_1_F000", "Ses01M_script01_1_M000"]
    assert drops.counts() == {"dialog_kind": 8}
    assert {e["detail"] for e in drops.entries} == {"improvised"}


def test_every_transcript_utterance_is_kept_or_dropped(tree: Path) -> None:
    for label_set in ("paper4", "six"):
        for dialogs in ("both", "improvised", "scripted"):
            drops = DropLog()
            utts = read_iemocap(tree, label_set=label_set, dialogs=dialogs, drops=drops)
            assert len(utts) + len(drops.entries) == 10


def test_missing_root_and_non_iemocap_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="IEMOCAP root not found"):
        read_iemocap(tmp_path / "nope", label_set="paper4", dialogs="both", drops=DropLog())
    with pytest.raises(FileNotFoundError, match="no Session1..Session5"):
        read_iemocap(tmp_path, label_set="paper4", dialogs="both", drops=DropLog())


def _paper4_utterances() -> list[Utterance]:
    """5531 in-memory utterances with exactly the literature's per-session and per-class counts."""
    sessions = [s for s, n in KNOWN_PAPER4_COUNTS["session"].items() for _ in range(n)]
    labels = [c for c, n in KNOWN_PAPER4_COUNTS["label"].items() for _ in range(n)]
    assert len(sessions) == len(labels) == 5531
    return [Utterance(id=f"u{i}", path="", text="", label=lab, speaker="", session=s)
            for i, (s, lab) in enumerate(zip(sessions, labels))]


def test_check_paper4_counts_passes_on_exact_counts() -> None:
    check_paper4_counts(_paper4_utterances())


def test_check_paper4_counts_lists_differences_for_one_missing() -> None:
    utts = _paper4_utterances()
    missing = utts.pop(0)  # Session1, ang
    assert (missing.session, missing.label) == ("Session1", "ang")
    with pytest.raises(ValueError) as err:
        check_paper4_counts(utts)
    message = str(err.value)
    assert "total: expected 5531, got 5530" in message
    assert "session Session1: expected 1085, got 1084" in message
    assert "label ang: expected 1103, got 1102" in message
    assert "Session2" not in message and "label hap" not in message


def test_check_paper4_counts_catches_relabelled_utterances() -> None:
    utts = _paper4_utterances()
    utts[0].label = "hap"  # total and sessions still match
    with pytest.raises(ValueError) as err:
        check_paper4_counts(utts)
    message = str(err.value)
    assert "total:" not in message
    assert "label ang: expected 1103, got 1102" in message
    assert "label hap: expected 1636, got 1637" in message


def test_check_paper4_counts_on_a_partial_tree(tree: Path) -> None:
    utts = read_iemocap(tree, label_set="paper4", dialogs="both", drops=DropLog())
    with pytest.raises(ValueError, match="Session5: expected 1241, got 0"):
        check_paper4_counts(utts)


def test_demo_corpus_parses_with_the_reader(tmp_path: Path) -> None:
    counts = generate_demo_corpus(tmp_path, seed=1, utterances_per_speaker=4)
    drops = DropLog()
    utts = read_iemocap(tmp_path, label_set="paper4", dialogs="both", drops=drops)
    assert len(utts) == counts["target_utterances"]
    assert len(drops.entries) == counts["dropped_labels"]
    assert len(utts) + len(drops.entries) == counts["utterances"] == 5 * 2 * 4
    assert all(e["reason"].startswith("label_") for e in drops.entries)
    assert {u.label for u in utts} == {"ang", "hap", "sad", "neu"}
    assert {u.session for u in utts} == {f"Session{i}" for i in range(1, 6)}
    # Every speaker has 4 turns, kept or dropped for their label.
    turns = Counter(u.speaker for u in utts) + Counter(e["id"][:5] + e["id"].rsplit("_", 1)[1][0]
                                                       for e in drops.entries)
    assert turns == {f"Ses0{s}{g}": 4 for s in range(1, 6) for g in "FM"}
    for u in utts:
        assert Path(u.path).is_file()
        assert u.speaker == u.id[:5] + u.id.rsplit("_", 1)[1][0]
        info = sf.info(u.path)
        assert info.samplerate == 16000 and info.frames > 0
        assert u.text
