"""The bad-input battery: hostile audio, CSVs and params through prepare (and a tiny corpus on through split,
extraction and the training features), and hostile files and arguments through `mmser predict`.

For every input: a one-line error naming what to fix, or a counted drop with its reason; never a traceback for
user input, never a row lost without a reason (kept + dropped = the manifest's rows), and flat memory on a
20-minute file.
"""

from __future__ import annotations

import csv
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from test_predict import build_models, cli_fresh

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
CLASSES = ["ang", "hap", "sad", "neu"]


def _voice(seconds: float, rate: int = RATE, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A harmonic tone with vibrato and a little noise (openSMILE finds a pitch in it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 5)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _write_long(path: Path, minutes: float) -> None:
    """A long 16 kHz PCM_16 file written one second at a time (the test process never holds it whole)."""
    second = _voice(1.0)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as f:
        for _ in range(int(minutes * 60)):
            f.write(second)


def _truncated(path: Path) -> None:
    sf.write(path, _voice(2.0), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 1])  # an interrupted copy, cut mid-sample


def _truncated_flac(path: Path) -> None:
    sf.write(path, _voice(2.0), RATE, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Hostile audio: file name -> (how to write it, the outcome: None = kept, else the drop reason).
AUDIO = {
    "8bit.wav": (lambda p: sf.write(p, _voice(1.5), RATE, subtype="PCM_U8"), None),
    "8khz.wav": (lambda p: sf.write(p, _voice(1.5, 8000), 8000), None),
    "96khz.wav": (lambda p: sf.write(p, _voice(1.5, 96000), 96000, subtype="PCM_24"), None),
    "6ch.wav": (lambda p: sf.write(p, np.stack([_voice(1.5, seed=c) for c in range(6)], axis=1), RATE), None),
    "mpeg.mp3": (lambda p: sf.write(p, _voice(1.5), RATE, format="MP3"), None),
    "vorbis.ogg": (lambda p: sf.write(p, _voice(1.5), RATE, format="OGG", subtype="VORBIS"), None),
    "opus.ogg": (lambda p: sf.write(p, _voice(1.5, 48000), 48000, format="OGG", subtype="OPUS"), None),
    "20min.wav": (lambda p: _write_long(p, 20), None),
    "nan.wav": (lambda p: sf.write(p, np.full(RATE, np.nan, np.float32), RATE, subtype="FLOAT"),
                "non_finite_samples"),
    "silent.wav": (lambda p: sf.write(p, np.zeros(RATE, np.float32), RATE), "silent"),
    "empty.wav": (lambda p: p.write_bytes(b""), "undecodable"),
    "no_samples.wav": (lambda p: sf.write(p, np.zeros(0, np.float32), RATE), "empty"),
    "corrupt.wav": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), "undecodable"),
    "text.wav": (lambda p: p.write_text("this is not audio, it is text"), "undecodable"),
    "truncated.wav": (_truncated, "truncated"),
    "cut.flac": (_truncated_flac, "undecodable"),
}


def _write_audio(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (write, _) in AUDIO.items():
        write(folder / name)
        paths[name] = folder / name
    return paths


def _params(tmp_path: Path, manifest: Path, **sections: dict) -> Path:
    """The repository's params.yaml for a manifest corpus, with `sections` edited."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="manifest", manifest=str(manifest), root=str(manifest.parent))
    for section, values in sections.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _data_rows(manifest: Path) -> int:
    """Rows of a CSV by the csv module (blank lines are not rows): what kept + dropped must add up to."""
    with manifest.open(encoding="utf-8-sig", newline="") as f:
        return sum(1 for row in csv.reader(f, delimiter=";" if ";" in f.readline() else ",") if row)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A private MLflow store and embedding cache, for in-process stage runs and subprocesses alike (one per
    module: creating a SQLite store costs seconds)."""
    root = tmp_path_factory.mktemp("store")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "DVC_ROOT": str(root),
           "MMSER_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


def _stage(name: str, args: dict[str, Path | str], monkeypatch, capsys) -> tuple[int, str]:
    """Run `python stages/<name>.py --key value ...` in this process: (exit status, stderr). A bug raises."""
    argv = [f"stages/{name}.py", *[x for k, v in args.items() for x in (f"--{k}", str(v))]]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        runpy.run_path(str(REPO / "stages" / f"{name}.py"), run_name="__main__")
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    return code, capsys.readouterr().err


def _prepare(tmp_path: Path, params: Path, manifest: Path, monkeypatch, capsys) -> tuple[int, str, dict | None]:
    table, report = tmp_path / "prepared" / "utterances.csv", tmp_path / "prepared" / "report.json"
    code, err = _stage("prepare", {"root": manifest.parent, "manifest": manifest, "table": table, "report": report,
                                   "params": params}, monkeypatch, capsys)
    return code, err, json.loads(report.read_text()) if code == 0 else None


def _one_error_line(code: int, err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---- prepare: one manifest holding every hostile row ----

def test_every_hostile_row_costs_itself_with_its_reason(tmp_path: Path, store, monkeypatch, capsys) -> None:
    audio = _write_audio(tmp_path / "corpus" / "audio")
    good = tmp_path / "corpus" / "dir with spaces" / "ünïcødé 日本 #1.wav"
    good.parent.mkdir()
    sf.write(good, _voice(1.2), RATE)
    _write_clips(tmp_path / "corpus" / "audio", ["e1.wav", "e2.wav", "e3.wav"])
    header = ["path", "text", "label", "speaker", "session", "extra note"]
    rows = [[f"audio/{name}", f"text of {name}", "ang", f"s{i % 3}", "1", "x"] for i, name in enumerate(AUDIO)]
    rows += [
        ["dir with spaces/ünïcødé 日本 #1.wav", "unicode and spaces", "hap", "s1", "1", ""],
        ["audio/missing.wav", "no such file", "sad", "s1", "1", ""],
        ["./audio/8bit.wav", "the same id again", "neu", "s2", "1", ""],
        ["audio/e1.wav", "empty label", "", "s2", "1", ""],
        ["audio/e2.wav", "unknown label", "bored", "s2", "1", ""],
        ["audio/e3.wav", "empty speaker", "neu", " ", "1", ""],
        ["audio/mpeg.mp3", "an, unquoted, comma", "neu", "s2", "1", "", "?"],
        ["", "a transcript without audio", "neu", "s0", "1", ""],
        ["", "", "neu", "s0", "1", ""],
    ]
    manifest = tmp_path / "corpus" / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    with manifest.open("a") as f:
        f.write("audio/vorbis.ogg,short row,neu\n")
    text_only, no_input = f"row{len(rows)}", f"row{len(rows) + 1}"  # line numbers: the header is line 1
    expected = {f"audio/{Path(name).with_suffix('').as_posix()}": reason for name, (_, reason) in AUDIO.items()}
    expected.update({"dir with spaces/ünïcødé 日本 #1": None, "audio/missing": "missing_audio", text_only: None,
                     no_input: "no_input"})
    also_dropped = [("audio/8bit", "duplicate_id"), ("audio/e1", "empty_label"), ("audio/e2", "label_bored"),
                    ("audio/e3", "empty_speaker"), ("audio/mpeg", "wrong_field_count"),
                    ("audio/vorbis", "wrong_field_count")]
    code, err, result = _prepare(tmp_path, _params(tmp_path, manifest), manifest, monkeypatch, capsys)
    assert code == 0 and "error:" not in err, err
    table = tmp_path / "prepared" / "utterances.csv"

    n_rows = _data_rows(manifest)
    assert n_rows == len(rows) + 1
    assert result["input_utterances"] == n_rows == result["kept"] + result["dropped"]
    from mmser.data.records import read_table

    kept = read_table(table)
    dropped = {(e["id"], e["reason"]) for e in result["dropped_utterances"]}
    assert len(kept) == result["kept"] and len(dropped) == result["dropped"]
    for utt_id, reason in expected.items():
        if reason is None:
            assert utt_id in set(kept["id"]), (utt_id, result["dropped_utterances"])
        else:
            assert (utt_id, reason) in dropped, (utt_id, reason, result["dropped_utterances"])
    for utt_id, reason in also_dropped:
        assert (utt_id, reason) in dropped, (utt_id, reason)
    assert len(dropped) == len(also_dropped) + sum(r is not None for r in expected.values())
    details = {e["id"]: e["detail"] for e in result["dropped_utterances"] if e["reason"] != "duplicate_id"}
    assert str(audio["corrupt.wav"]) in details["audio/corrupt"]  # the report names the file
    assert details["audio/missing"].endswith(str(manifest.parent / "audio" / "missing.wav"))
    long = kept.set_index("id").loc["audio/20min"]
    assert float(long["duration"]) == pytest.approx(1200.0)
    text_row = kept.set_index("id").loc[text_only]
    assert text_row["path"] == "" and text_row["duration"] == "" and result["without_audio"] == 1
    assert "meta_extra note" in kept.columns  # extra columns are kept as metadata
    for name in ("8bit", "8khz", "96khz", "6ch", "mpeg", "vorbis", "opus"):
        assert float(kept.set_index("id").loc[f"audio/{name}", "duration"]) == pytest.approx(1.5, abs=0.1)


def test_twenty_minute_file_keeps_prepare_memory_flat(tmp_path: Path) -> None:
    """Peak memory of checking a 20-minute file is that of a 20-second one: the check decodes in blocks."""
    _write_long(tmp_path / "long.wav", 20)
    _write_long(tmp_path / "short.wav", 20 / 60)
    script = ("import resource, sys\nfrom mmser.data.audio import audio_problem\n"
              "print(audio_problem(sys.argv[1])[1], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = {}
    for name in ("short", "long"):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.wav")], capture_output=True,
                             text=True, check=True).stdout.split()
        peaks[name] = (float(out[0]), int(out[1]))
    assert peaks["long"][0] == pytest.approx(1200.0) and peaks["short"][0] == pytest.approx(20.0)
    whole = 20 * 60 * RATE * 4 // 1024  # KiB of the file decoded whole, as float32 mono
    assert peaks["long"][1] - peaks["short"][1] < whole / 4, (peaks, whole)


# ---- prepare: CSV shapes ----

def _write_clips(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sf.write(folder / name, _voice(1.2, seed=i), RATE)


def test_bom_semicolons_and_extra_columns_are_read(tmp_path: Path, store, monkeypatch, capsys) -> None:
    _write_clips(tmp_path, ["0000.wav", "0001.wav", "0002.wav"])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\ufeffpath;label;speaker;gender;age\n0000.wav;ang;01;f;30\n0001.wav;hap;02;m;41\n"
                        "0002.wav;sad;01;f;30\n", encoding="utf-8")
    code, err, report = _prepare(tmp_path, _params(tmp_path, manifest), manifest, monkeypatch, capsys)
    assert code == 0, err
    assert report["kept"] == 3 and report["dropped"] == 0 and report["without_text"] == 3
    from mmser.data.records import read_table

    table = read_table(tmp_path / "prepared" / "utterances.csv")
    assert table["id"].tolist() == ["0000", "0001", "0002"] and table["speaker"].tolist() == ["01", "02", "01"]
    assert table["meta_age"].tolist() == ["30", "41", "30"] and set(table["text"]) == {""}


@pytest.mark.parametrize("content, message", [
    ("path,text,speaker\na.wav,hi,s1\n", "missing column 'label'"),
    ("label,speaker\nang,s1\n", "neither a 'path' nor a 'text' column"),
    ("text,label,speaker\nhi,ang,s1\n", "needs an 'id' column"),
    ("", "missing column 'label'"),
    ("path,path,label,speaker\na.wav,b.wav,ang,s1\n", "column 'path' appears twice"),
    (b"path,label,speaker\n\xff\xfe.wav,ang,s1\n", "not UTF-8"),
])
def test_unusable_manifest_is_one_line(tmp_path: Path, store, monkeypatch, capsys, content, message) -> None:
    manifest = tmp_path / "manifest.csv"
    if isinstance(content, bytes):
        manifest.write_bytes(content)
    else:
        manifest.write_text(content)
    code, err, _ = _prepare(tmp_path, _params(tmp_path, manifest), manifest, monkeypatch, capsys)
    assert message in _one_error_line(code, err)
    assert not (tmp_path / "prepared" / "utterances.csv").exists()


def test_every_row_unusable_is_one_line(tmp_path: Path, store, monkeypatch, capsys) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker\nnone.wav,ang,s1\nalso_none.wav,hap,s1\n")
    code, err, _ = _prepare(tmp_path, _params(tmp_path, manifest), manifest, monkeypatch, capsys)
    assert "'missing_audio': 2" in _one_error_line(code, err)


def test_missing_manifest_and_root_are_one_line(tmp_path: Path, store, monkeypatch, capsys) -> None:
    code, err, _ = _prepare(tmp_path, _params(tmp_path, tmp_path / "absent.csv"), tmp_path / "absent.csv",
                            monkeypatch, capsys)
    assert "CSV not found" in _one_error_line(code, err)
    params = _params(tmp_path, tmp_path / "m.csv", data={"source": "iemocap", "root": str(tmp_path / "nowhere")})
    code, err = _stage("prepare", {"root": tmp_path / "nowhere", "manifest": tmp_path, "params": params,
                                   "table": tmp_path / "t.csv", "report": tmp_path / "r.json"},
                       monkeypatch, capsys)
    assert "IEMOCAP root not found" in _one_error_line(code, err)


# ---- params: typos and wrong types ----

@pytest.mark.parametrize("edit, message", [
    ({"train": {"epoch": 3}}, "unknown key train.epoch"),
    ({"data": {"sourse": "manifest"}}, "unknown key data.sourse"),
    ({"train": {"epochs": "ten"}}, "train.epochs = 'ten' is not allowed; expected int"),
    ({"train": {"epochs": True}}, "train.epochs = True is not allowed"),
    ({"data": {"source": "csv"}}, "data.source = 'csv' is not allowed; expected one of 'demo', 'iemocap'"),
    ({"base": {"classes": "ang"}}, "base.classes = 'ang' is not allowed; expected list[str]"),
    ({"split": {"test_fraction": 1.5}}, "split.test_fraction = 1.5 is not allowed"),
    ({"data": {"labels": {"angry": "furious"}}}, "data.labels maps to 'furious'"),
    ({"data": {"labels": ["angry"]}}, "data.labels = ['angry'] is not allowed"),
])
def test_params_typos_and_wrong_types_are_one_line(tmp_path: Path, store, monkeypatch, capsys, edit,
                                                   message) -> None:
    _write_clips(tmp_path, ["a.wav"])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker\na.wav,ang,s1\n")
    code, err, _ = _prepare(tmp_path, _params(tmp_path, manifest, **edit), manifest, monkeypatch, capsys)
    assert message in _one_error_line(code, err)


def test_the_real_command_prints_one_line_and_no_traceback(tmp_path: Path, store: dict) -> None:
    """`python stages/prepare.py` as DVC runs it, with a typo in params.yaml: one line on stderr, status 1."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker\na.wav,ang,s1\n")
    params = _params(tmp_path, manifest, train={"epoch": 3})
    table, report = tmp_path / "out" / "utterances.csv", tmp_path / "out" / "report.json"
    done = subprocess.run([sys.executable, "stages/prepare.py", "--root", str(tmp_path), "--manifest", str(manifest),
                           "--table", str(table), "--report", str(report), "--params", str(params)],
                          cwd=REPO, env={**os.environ, **store}, capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines() == ["error: params.yaml: unknown key train.epoch; allowed keys in "
                                                "'train': " + ", ".join(yaml.safe_load((REPO / "params.yaml")
                                                                                       .read_text())["train"])]
    assert done.returncode == 1 and not table.exists() and not report.exists()


@pytest.mark.parametrize("content, message", [
    ("base: [unclosed\n", "is not valid YAML"),
    ("- just\n- a list\n", "expected sections (a mapping)"),
    ("base:\n  seed: 1\n", "missing section"),
    ("", "train.lr = '1e-3' is not allowed; expected float"),  # YAML 1.1 reads 1e-3 (no dot) as a string
])
def test_params_file_that_is_not_params_is_one_line(tmp_path: Path, store, monkeypatch, capsys, content,
                                                    message) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(content if content else (REPO / "params.yaml").read_text().replace("lr: 1.0e-3", "lr: 1e-3"))
    code, err, _ = _prepare(tmp_path, params, tmp_path / "m.csv", monkeypatch, capsys)
    assert message in _one_error_line(code, err)


def test_a_bug_keeps_its_traceback(tmp_path: Path, store, monkeypatch, capsys) -> None:
    """Not bad input: a ValueError from inside the code is a bug, and must not read like the user's mistake."""
    import mmser.data.prepare

    def broken(*args, **kwargs):
        return ["x"].index("y")  # ValueError: 'y' is not in list

    _write_clips(tmp_path, ["a.wav"])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker\na.wav,ang,s1\n")
    monkeypatch.setattr(mmser.data.prepare, "build_report", broken)
    with pytest.raises(ValueError, match="is not in list"):
        _prepare(tmp_path, _params(tmp_path, manifest), manifest, monkeypatch, capsys)
    assert not (tmp_path / "prepared" / "utterances.csv").exists()  # outputs removed all the same


# ---- on through split and extraction: numeric ids, odd formats, a corpus without transcripts ----

def test_numeric_ids_and_odd_formats_reach_the_training_features(tmp_path: Path, store, monkeypatch,
                                                                 capsys) -> None:
    """Files 0000.wav, 0001.wav ... (ids that look like numbers) through prepare, split, both extractions and the
    features train and evaluate read: every id of every fold is found (it failed with "56 utterances have no
    embedding (e.g. 0)" while ids were read back as integers)."""
    from tiny_models import make_tiny_bert

    corpus = tmp_path / "corpus"
    names = [f"{i:04d}.wav" for i in range(16)]
    _write_clips(corpus, names)
    sf.write(corpus / "0016.mp3", _voice(1.5, seed=16), RATE, format="MP3")
    sf.write(corpus / "0017.wav", np.stack([_voice(1.5, 44100, seed=17)] * 2, axis=1), 44100, subtype="PCM_U8")
    names += ["0016.mp3", "0017.wav"]
    words = ["i am so angry", "we won this is great", "i lost it today", "the weather is mild"]
    with (corpus / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text", "label", "speaker", "session"])
        for i, name in enumerate(names):
            writer.writerow([name, words[i % 4], CLASSES[i % 4], f"{i % 4:02d}", str(i % 2 + 1)])
    bert = make_tiny_bert(tmp_path / "bert")
    params = _params(tmp_path, corpus / "manifest.csv", split={"protocol": "loso"},
                     extract_text={"model": str(bert), "precision": "fp32"},
                     extract_audio={"workers": 0, "precision": "fp32"})
    out = tmp_path / "data"
    steps = [("prepare", {"root": corpus, "manifest": corpus / "manifest.csv", "table": out / "utterances.csv",
                          "report": out / "report.json"}),
             ("split", {"table": out / "utterances.csv", "out": out / "splits.json"}),
             ("transcribe", {"table": out / "utterances.csv", "out": out / "texts.csv", "report": out / "texts.json"}),
             ("extract_text", {"texts": out / "texts.csv", "texts-report": out / "texts.json", "out": out / "text.npz",
                               "info": out / "text.json"}),
             ("extract_audio", {"table": out / "utterances.csv", "out": out / "audio.npz",
                                "info": out / "audio.json"})]
    for stage, args in steps:
        code, err = _stage(stage, {**args, "params": params}, monkeypatch, capsys)
        assert code == 0, (stage, err)
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == len(names) and report["dropped"] == 0

    from mmser.features import load_features

    features, _ = load_features(str(out / "utterances.csv"), text_path=str(out / "text.npz"),
                                audio_path=str(out / "audio.npz"), classes=CLASSES, audio_pooling="sum")
    folds = json.loads((out / "splits.json").read_text())["folds"]
    assert len(folds) == 2
    for fold in folds:
        ids = fold["train"] + fold["val"] + fold["test"]
        rows = features.rows(ids)  # what training and evaluation look up
        assert len(set(rows.tolist())) == len(ids)
    assert sorted(u for f in folds for u in f["test"]) == [Path(n).stem for n in names]
    assert sorted(features.index) == [Path(n).stem for n in names]
    assert np.isfinite(features.audio).all() and np.isfinite(features.text).all()


def test_stale_embeddings_name_both_files_not_just_extraction(tmp_path: Path) -> None:
    """Ids that differ (a table and embeddings made from different versions of the data) are one clear error."""
    from mmser.data.records import IdMismatchError, check_ids

    with pytest.raises(IdMismatchError) as err:
        check_ids(["0000", "0001", "0002"], ["0", "1", "2"], wanted_from="the prepared table",
                  present_in="data/embeddings/text.npz")
    message = str(err.value)
    assert message.startswith("3 of the 3 utterances of the prepared table are not in data/embeddings/text.npz "
                              "(e.g. '0000'), which lists 3 others (e.g. '0')")
    assert "differ only in how a number is written" in message and "rerun `dvc repro`" in message
    with pytest.raises(IdMismatchError, match="1 of the 2 utterances") as err:
        check_ids(["a", "b"], {"a": 0, "c": 1}, wanted_from="the split", present_in="the features")
    assert "number" not in str(err.value)
    check_ids(["a"], {"a", "b"}, wanted_from="x", present_in="y")  # a subset is fine


# ---- mmser predict ----

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hostile audio file but the 20-minute one (eGeMAPS takes over a minute on it), in a folder with spaces."""
    folder = tmp_path_factory.mktemp("hostile") / "clips with spaces ü"
    folder.mkdir()
    paths = {}
    for name, (write, _) in AUDIO.items():
        if name != "20min.wav":
            write(folder / name)
            paths[name] = folder / name
    return paths


def test_predict_argument_and_input_errors_come_before_torch_and_mlflow(models, hostile, tmp_path: Path) -> None:
    fusion, audio_model = str(models["checkpoints"]["fusion"]), str(models["checkpoints"]["audio"])
    good = str(models["clips"]["a"])
    csvs = {"no_columns.csv": "id,label\n1,ang\n", "latin1.csv": b"path,text\nb\xe9.wav,caf\xe9\n",
            "fields.csv": "path,text\na.wav,hi\na.wav,hi, there\n", "audio_only.csv": "path\na.wav\n",
            "empty.csv": ""}
    for name, content in csvs.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    cases = [
        (["--model", fusion, "--audio", str(tmp_path / "missing.wav"), "--text", "hi"], "--audio: file not found"),
        *[(["--model", fusion, "--audio", str(hostile[n]), "--text", "hi"], expected) for n, expected in [
            ("empty.wav", ": undecodable: "), ("corrupt.wav", ": undecodable: "), ("text.wav", ": undecodable: "),
            ("no_samples.wav", ": empty"), ("truncated.wav", ": truncated: the data chunk promises")]],
        (["--model", fusion, "--audio", good, "--text", "  "], "--text is empty"),
        (["--model", fusion, "--audio", good], "this fusion model needs --text and --audio"),
        (["--model", audio_model, "--text", "hi"], "this audio model needs --audio"),
        (["--model", fusion, "--csv", str(tmp_path / "missing.csv")], "--csv: file not found"),
        (["--model", fusion, "--csv", str(tmp_path / "no_columns.csv")], "needs a 'path' and/or 'text' column"),
        (["--model", fusion, "--csv", str(tmp_path / "empty.csv")], "no header (empty file)"),
        (["--model", fusion, "--csv", str(tmp_path / "latin1.csv")], "not UTF-8 text"),
        (["--model", fusion, "--csv", str(tmp_path / "fields.csv")], "line 3 has 3 fields, the header 2"),
        (["--model", fusion, "--csv", str(tmp_path / "audio_only.csv")], "fusion model needs column(s) text"),
        (["--model", str(tmp_path / "absent.ckpt"), "--text", "hi"], "absent.ckpt not found"),
        (["--model", fusion, "--audio", good, "--csv", str(tmp_path / "audio_only.csv")], "give either"),
        (["--model", fusion, "--text", "hi", "--out", "x.csv"], "--out goes with --csv"),
        (["--audio", good, "--text", "hi"], "no MLflow store at"),  # the default model, before `make repro`
    ]
    env = {**os.environ, "DVC_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for (argv, expected), result in zip(cases, cli_fresh([argv for argv, _ in cases], tmp_path, env)):
        lines = result["err"].strip().splitlines()
        assert result["code"] == 1 and len(lines) == 1 and expected in lines[0], (argv, result)
        assert lines[0].startswith("mmser predict: error: ") and "Traceback" not in result["err"]
        assert not {"torch", "mlflow", "transformers"} & set(result["heavy"]), (argv, result["heavy"])


def test_predict_hostile_audio_fails_only_its_row(models, hostile, tmp_path: Path, capsys) -> None:
    from mmser.cli import main
    from mmser.data.records import read_table

    manifest = tmp_path / "hostile.csv"
    # A BOM and `;` as the separator (a spreadsheet's export), absolute paths with spaces and non-ASCII letters.
    lines = ["\ufeffid;path;text"] + [f"{name};{path};I am so angry" for name, path in hostile.items()]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(models["checkpoints"]["fusion"]), "--csv", str(manifest),
                 "--out", str(out)]) == 0
    table = read_table(out).set_index("id")
    assert len(table) == len(hostile)
    for name, (_, reason) in AUDIO.items():
        if name not in hostile:
            continue
        row = table.loc[name]
        if reason is None:
            assert row["error"] == "" and row["label"] in CLASSES, (name, row["error"])
            assert sum(float(row[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
        else:
            assert row["error"].startswith(f"audio {reason}") and row["label"] == "", (name, row["error"])
    assert f"{len(hostile)} rows, {sum(r is not None for n, (_, r) in AUDIO.items() if n in hostile)} failed" in \
        capsys.readouterr().err

    for name in ("nan.wav", "silent.wav", "cut.flac"):  # decodable headers: found once the model reads them
        code = main(["predict", "--model", str(models["checkpoints"]["fusion"]), "--audio", str(hostile[name]),
                     "--text", "hi"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith(f"mmser predict: error: audio {AUDIO[name][1]}")


def test_a_bug_in_predict_keeps_its_traceback(models, monkeypatch, capsys) -> None:
    """A ValueError from inside mmser predict is a bug: it propagates (a traceback), not a one-line 'error'."""
    import mmser.card
    from mmser.cli import main

    def broken(*args, **kwargs):
        return ["x"].index("y")

    monkeypatch.setattr(mmser.card, "model_modality", broken)
    with pytest.raises(ValueError, match="is not in list"):
        main(["predict", "--model", str(models["checkpoints"]["fusion"]), "--text", "hi"])
    assert "error:" not in capsys.readouterr().err
