"""CSV manifest reader: paths, label mapping, metadata, and errors that name the row and the column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmser.data.manifest import ManifestError, read_manifest
from mmser.data.records import DropLog

CLASSES = ["ang", "hap", "sad", "neu"]


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(1600) / 5.0)).astype(np.float32), 16000)
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder with a few wavs, one of them outside it (for an absolute path)."""
    for name in ("a.wav", "b.wav", "c.wav", "sub/d.wav"):
        _wav(tmp_path / "corpus" / name)
    _wav(tmp_path / "elsewhere" / "e.wav")
    return tmp_path / "corpus"


def test_relative_and_absolute_paths_and_extra_columns(corpus: Path, tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "e.wav"
    path = _csv(corpus / "manifest.csv", ["path", "text", "label", "speaker", "session", "gender", "age"], [
        ["a.wav", " hello there ", "ang", "spk1", "s1", "F", "31"],
        ["sub/d.wav", "bye", "sad", "spk2", "s2", "M", "40"],
        [str(absolute), "far away", "neu", "spk3", "s1", "F", "22"],
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [u.id for u in utts] == ["a", "sub/d", Path(str(absolute)).with_suffix("").as_posix()]
    assert [u.path for u in utts] == [str(corpus / "a.wav"), str(corpus / "sub" / "d.wav"), str(absolute)]
    assert all(Path(u.path).is_file() for u in utts)
    assert [u.text for u in utts] == ["hello there", "bye", "far away"]
    assert [u.label for u in utts] == ["ang", "sad", "neu"]
    assert [u.speaker for u in utts] == ["spk1", "spk2", "spk3"]
    assert [u.session for u in utts] == ["s1", "s2", "s1"]
    assert utts[0].meta == {"gender": "F", "age": "31"}
    assert drops.entries == []


def test_id_column_is_used_when_present(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["id", "path", "text", "label", "speaker"],
                [["utt-1", "a.wav", "x", "hap", "s"]])
    (utt,) = read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())
    assert utt.id == "utt-1"
    assert utt.meta == {}


def test_label_mapping_drops_and_counts_unlisted(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "angry", "s1"],
        ["b.wav", "y", "excited", "s1"],
        ["c.wav", "z", "bored", "s2"],
        ["sub/d.wav", "w", "bored", "s2"],
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={"angry": "ang", "excited": "hap"}, classes=CLASSES, drops=drops)
    assert [(u.id, u.label) for u in utts] == [("a", "ang"), ("b", "hap")]
    assert drops.counts() == {"label_bored": 2}
    assert [e["id"] for e in drops.entries] == ["c", "sub/d"]
    assert len(utts) + len(drops.entries) == 4


def test_empty_mapping_is_identity_over_classes(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "neu", "s1"],
        ["c.wav", "z", "fru", "s2"],  # a label that is not a class
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [u.label for u in utts] == ["ang", "neu"]
    assert drops.counts() == {"label_fru": 1}


def test_session_is_optional(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [["a.wav", "x", "ang", "s1"]])
    (utt,) = read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())
    assert utt.session == ""


def test_missing_column_is_named(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "speaker"], [["a.wav", "x", "s1"]])
    with pytest.raises(ManifestError, match="missing column 'label'"):
        read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())


def test_empty_required_field_names_row_and_column(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "hap", "  "],
    ])
    with pytest.raises(ManifestError, match="row 3: empty required column 'speaker'"):
        read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())


def test_nonexistent_audio_names_row_and_path_column(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "ang", "s1"],
        ["missing.wav", "z", "sad", "s2"],
    ])
    with pytest.raises(ManifestError) as err:
        read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())
    message = str(err.value)
    assert "row 4" in message
    assert "column 'path'" in message
    assert "missing.wav" in message


def test_duplicate_id(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "ang", "s1"],
        ["./a.wav", "again", "hap", "s1"],  # the same file, spelled differently
    ])
    with pytest.raises(ManifestError, match="row 4: duplicate utterance id 'a'"):
        read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CSV not found"):
        read_manifest(tmp_path / "none.csv", labels={}, classes=CLASSES, drops=DropLog())
