"""CSV manifest reader: paths, label mapping, metadata; a bad row costs that row (counted, with its reason)."""

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
    path = _csv(corpus / "m.csv", ["label", "speaker", "session"], [["ang", "s1", "1"]])
    with pytest.raises(ManifestError, match="neither a 'path' nor a 'text' column"):
        read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())


def test_empty_required_field_costs_its_row(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "hap", "  "],
        ["c.wav", "z", "", "s2"],
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [u.id for u in utts] == ["a"]
    assert drops.entries == [{"id": "b", "reason": "empty_speaker", "detail": "row 3"},
                             {"id": "c", "reason": "empty_label", "detail": "row 4"}]


def test_missing_audio_costs_its_row_with_the_path(corpus: Path) -> None:
    """One missing file among many costs one counted row, as in the IEMOCAP reader, not the run."""
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "ang", "s1"],
        ["missing.wav", "z", "sad", "s2"],
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [u.id for u in utts] == ["a", "b"]
    assert drops.entries == [{"id": "missing", "reason": "missing_audio", "detail": f"row 4: {corpus / 'missing.wav'}"}]


def test_duplicate_id_keeps_the_first_and_counts_the_rest(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["path", "text", "label", "speaker"], [
        ["a.wav", "x", "ang", "s1"],
        ["b.wav", "y", "ang", "s1"],
        ["./a.wav", "again", "hap", "s1"],  # the same file, spelled differently
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [(u.id, u.text) for u in utts] == [("a", "x"), ("b", "y")]
    assert drops.entries == [{"id": "a", "reason": "duplicate_id", "detail": "row 4: the same id as row 2"}]


def test_numeric_file_names_keep_their_zeros(corpus: Path) -> None:
    for name in ("0000.wav", "0001.wav", "0010.wav"):
        _wav(corpus / name)
    path = _csv(corpus / "m.csv", ["path", "label", "speaker"],
                [["0000.wav", "ang", "1"], ["0001.wav", "hap", "2"], ["0010.wav", "sad", "01"]])
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())
    assert [u.id for u in utts] == ["0000", "0001", "0010"]
    assert [u.speaker for u in utts] == ["1", "2", "01"]


def test_no_text_column_is_an_audio_only_corpus(corpus: Path) -> None:
    """The shape of corpora without transcripts (e.g. ASED: path,label,speaker,gender,...)."""
    path = _csv(corpus / "m.csv", ["path", "label", "speaker", "gender", "sentence_id"], [
        ["a.wav", "ang", "ased_01", "female", "n01"],
        ["b.wav", "neu", "ased_02", "male", "n02"],
    ])
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())
    assert [(u.id, u.text, u.label) for u in utts] == [("a", "", "ang"), ("b", "", "neu")]
    assert utts[0].meta == {"gender": "female", "sentence_id": "n01"}


def test_no_path_column_is_a_text_only_corpus(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["id", "text", "label", "speaker"], [
        ["t1", "I am furious", "ang", "s1"],
        ["t2", "", "hap", "s1"],  # neither text nor audio: nothing to learn from
    ])
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [(u.id, u.path, u.text) for u in utts] == [("t1", "", "I am furious")]
    assert drops.counts() == {"no_input": 1}


def test_text_only_corpus_needs_ids(corpus: Path) -> None:
    path = _csv(corpus / "m.csv", ["text", "label", "speaker"], [["hi", "ang", "s1"]])
    with pytest.raises(ManifestError, match="without a 'path' column .* needs an 'id' column"):
        read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())


def test_bom_and_semicolons_are_read(corpus: Path) -> None:
    """What a spreadsheet in a European locale saves as "CSV UTF-8"."""
    path = corpus / "m.csv"
    path.write_text("\ufeffpath;text;label;speaker\na.wav;Hallo, wie geht's;ang;s1\n", encoding="utf-8")
    (utt,) = read_manifest(path, labels={}, classes=CLASSES, drops=DropLog())
    assert (utt.id, utt.text, utt.label) == ("a", "Hallo, wie geht's", "ang")


def test_wrong_field_count_costs_its_row(corpus: Path) -> None:
    path = corpus / "m.csv"
    path.write_text("path,text,label,speaker\na.wav,x,ang,s1\nb.wav,well, no,hap,s1\nc.wav,z,sad\n")
    drops = DropLog()
    utts = read_manifest(path, labels={}, classes=CLASSES, drops=drops)
    assert [u.id for u in utts] == ["a"]
    assert drops.counts() == {"wrong_field_count": 2}
    assert drops.entries[0]["detail"].startswith("row 3: 5 fields, the header has 4")


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CSV not found"):
        read_manifest(tmp_path / "none.csv", labels={}, classes=CLASSES, drops=DropLog())
