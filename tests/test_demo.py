"""The demo corpus generator writes a deterministic, self-consistent IEMOCAP-layout corpus."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from mmser.data.demo import DROPPED_LABELS, generate_demo_corpus

UTTERANCES_PER_SPEAKER = 4
SAMPLE_RATE = 16000
# Test-local patterns for the real IEMOCAP formats; the repo's reader is tested on its own.
TRANSCRIPT_LINE = re.compile(
    r"^(Ses\d\d[FM]_\S+_([FM])(XX\d|\d{3})) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)$")
EVAL_HEAD = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\w+)\t\[[\d.]+, [\d.]+, [\d.]+\]$")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _transcript_lines(session_dir: Path) -> list[re.Match[str]]:
    return [m for f in sorted((session_dir / "dialog" / "transcriptions").glob("*.txt"))
            for line in f.read_text().splitlines() if (m := TRANSCRIPT_LINE.match(line))]


def _eval_heads(session_dir: Path) -> dict[str, re.Match[str]]:
    return {m[3]: m for f in sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt"))
            for line in f.read_text().splitlines() if (m := EVAL_HEAD.match(line))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("demo") / "IEMOCAP_full_release"
    counts = generate_demo_corpus(root, seed=42, utterances_per_speaker=UTTERANCES_PER_SPEAKER)
    return root, counts


def test_same_seed_gives_identical_bytes(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    generate_demo_corpus(tmp_path, seed=42, utterances_per_speaker=UTTERANCES_PER_SPEAKER)
    assert _tree_hashes(tmp_path) == _tree_hashes(root)


def test_different_seed_differs(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    generate_demo_corpus(tmp_path, seed=43, utterances_per_speaker=UTTERANCES_PER_SPEAKER)
    first, second = _tree_hashes(root), _tree_hashes(tmp_path)
    shared = first.keys() & second.keys()
    assert any(first[k] != second[k] for k in shared)


def test_layout_and_wav_format(corpus) -> None:
    root, _ = corpus
    assert sorted(p.name for p in root.iterdir()) == [f"Session{i}" for i in range(1, 6)]
    for i in range(1, 6):
        session_dir = root / f"Session{i}"
        transcripts = sorted(p.stem for p in (session_dir / "dialog/transcriptions").glob("*.txt"))
        evaluations = sorted(p.stem for p in (session_dir / "dialog/EmoEvaluation").glob("*.txt"))
        wav_dirs = sorted(p.name for p in (session_dir / "sentences/wav").iterdir())
        assert transcripts and transcripts == evaluations == wav_dirs
        assert all(name.startswith(f"Ses0{i}") for name in transcripts)
        first_lines = {(session_dir / "dialog/EmoEvaluation" / f"{d}.txt").read_text()
                       .splitlines()[0] for d in evaluations}
        assert first_lines == {"% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"}
    for wav in root.rglob("*.wav"):
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert 1.5 <= info.duration <= 4.5


def test_every_utterance_has_wav_and_label_and_xx_lines_have_neither(corpus) -> None:
    root, _ = corpus
    for session_dir in sorted(root.iterdir()):
        heads = _eval_heads(session_dir)
        lines = _transcript_lines(session_dir)
        wavs = {p.stem: p for p in (session_dir / "sentences/wav").rglob("*.wav")}
        real = [m for m in lines if "XX" not in m[3]]
        xx = [m for m in lines if "XX" in m[3]]
        assert xx, "each session should exercise the XX-skipping rule"
        assert {m[1] for m in real} == set(heads) == set(wavs)
        assert not {m[1] for m in xx} & (set(heads) | set(wavs))
        for m in real:
            head = heads[m[1]]
            # The block's times are the transcript's times, and the wav lasts exactly that long.
            assert float(head[1]) == float(m[4]) and float(head[2]) == float(m[5])
            frames = sf.info(wavs[m[1]]).frames
            assert frames == round((float(m[5]) - float(m[4])) * SAMPLE_RATE)
            assert head[4] in {"ang", "hap", "exc", "sad", "neu", *DROPPED_LABELS}


def test_speakers_and_per_speaker_counts(corpus) -> None:
    root, _ = corpus
    for i, session_dir in enumerate(sorted(root.iterdir()), start=1):
        real = [m for m in _transcript_lines(session_dir) if "XX" not in m[3]]
        assert Counter(m[2] for m in real) == {"F": UTTERANCES_PER_SPEAKER,
                                              "M": UTTERANCES_PER_SPEAKER}
        by_dialog: dict[str, set[str]] = {}
        for m in real:
            by_dialog.setdefault(m[1].rsplit("_", 1)[0], set()).add(f"Ses0{i}{m[2]}")
        assert all(speakers == {f"Ses0{i}F", f"Ses0{i}M"} for speakers in by_dialog.values())


def test_returned_counts_match_files(corpus) -> None:
    root, counts = corpus
    heads = {k: m for s in sorted(root.iterdir()) for k, m in _eval_heads(s).items()}
    lines = [m for s in sorted(root.iterdir()) for m in _transcript_lines(s)]
    labels = Counter(m[4] for m in heads.values())
    dropped = sum(labels[lab] for lab in DROPPED_LABELS)
    assert counts["utterances"] == len(heads) == len(list(root.rglob("*.wav")))
    assert counts["utterances"] == 5 * 2 * UTTERANCES_PER_SPEAKER
    assert counts["dropped_labels"] == dropped > 0
    assert counts["target_utterances"] == len(heads) - dropped
    assert counts["xx_lines"] == sum("XX" in m[3] for m in lines)
    transcripts = list(root.glob("Session*/dialog/transcriptions/*.txt"))
    other = [line for f in transcripts for line in f.read_text().splitlines()
             if not TRANSCRIPT_LINE.match(line)]
    assert counts["dialogs"] == len(transcripts)
    assert counts["non_utterance_lines"] == len(other) > 0
    assert counts["sessions"] == 5
    assert {"ang", "sad", "neu"} <= set(labels) and labels["hap"] + labels["exc"] > 0
