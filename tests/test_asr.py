"""ASR with the real packaged Whisper base on spoken sentences: transcripts, WER, cache, the stage, and prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mmser.asr import Transcriber, build_texts, transcribe_files, transcriber_from_identity, word_error_rate
from mmser.cache import RecordCache
from mmser.data.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ang", "hap", "sad", "neu"]


@pytest.fixture(scope="module")
def transcriber(whisper_home: Path) -> Transcriber:
    """The packaged Whisper base, greedy, language detected (as params.yaml's defaults), int8 on CPU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMSER_CACHE_DIR", str(whisper_home))
        return Transcriber(language=None, beam_size=1, compute_type="int8", device="cpu")


def test_word_error_rate_ignores_case_and_punctuation() -> None:
    assert word_error_rate(["Kids are talking by the door"], ["kids are talking, by the door."])["wer"] == 0.0
    result = word_error_rate(["kids are talking by the door", ""], ["kids are walking by the door", "hello"])
    assert (result["wer"], result["utterances"], result["substitutions"]) == (round(1 / 6, 4), 1, 1)
    assert word_error_rate([""], ["anything"]) == {"wer": None, "utterances": 0}


@pytest.mark.slow
def test_whisper_transcribes_spoken_sentences(transcriber: Transcriber, spoken_clips) -> None:
    records = transcriber.transcribe([load_audio(str(path)) for path, _ in spoken_clips])
    assert [r["language"] for r in records] == ["en"] * len(spoken_clips)  # detected: language is null
    wer = word_error_rate([s for _, s in spoken_clips], [r["text"] for r in records])
    assert wer["utterances"] == len(spoken_clips) and wer["wer"] <= 0.15, records
    identity = transcriber.identity()
    assert identity["weights_sha256"] == "d01c3014881c9c6f" and identity["decoding"]["temperature"] == 0.0


def test_transcripts_are_cached_per_audio_and_decoding_options(transcriber: Transcriber, spoken_clips,
                                                               tmp_path: Path) -> None:
    paths = [str(path) for path, _ in spoken_clips[:2]]
    with RecordCache(tmp_path / "cache.sqlite") as cache:
        first, stats, seconds = transcribe_files(paths + paths[:1], transcriber, cache)
        assert (stats.unique, stats.misses) == (2, 2) and seconds > 1.0 and first[0] == first[2]
        again, stats, seconds = transcribe_files(paths, transcriber, cache)
        assert (stats.hits, stats.misses, seconds) == (2, 0, 0.0) and again == first[:2]
        transcriber.beam_size = 2  # another decoding option: another cache entry
        try:
            _, stats, _ = transcribe_files(paths[:1], transcriber, cache)
        finally:
            transcriber.beam_size = 1
        assert stats.misses == 1


def test_texts_per_mode_record_where_each_text_came_from() -> None:
    table = pd.DataFrame({"id": ["a", "b", "c"], "path": ["a.wav", "b.wav", ""], "text": ["given a", "", "given c"]})
    asked: list[list[str]] = []

    def transcribe(paths: list[str]) -> list[dict]:
        asked.append(paths)
        return [{"text": f"heard {p}" if p != "b.wav" else "", "language": "en"} for p in paths]

    given = build_texts(table, mode="given", transcribe=None)
    assert given["text_source"].tolist() == ["given", "none", "given"] and given["language"].tolist() == [""] * 3
    missing = build_texts(table, mode="asr_if_missing", transcribe=transcribe)
    assert asked == [["b.wav"]] and missing["text"].tolist() == ["given a", "", "given c"]
    assert missing["text_source"].tolist() == ["given", "asr", "given"]  # ASR ran on b and heard nothing
    every = build_texts(table, mode="asr", transcribe=transcribe)
    assert asked[-1] == ["a.wav", "b.wav"]  # c has no audio: its given text stays
    assert every["text"].tolist() == ["heard a.wav", "", "given c"]
    assert every["text_source"].tolist() == ["asr", "asr", "given"]
    assert every["language"].tolist() == ["en", "en", ""]


def _env(root: Path, cache: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MMSER_CACHE_DIR": str(cache),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("LOCAL_RANK", None)
    return env


def _params(root: Path, **asr) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["asr"].update(compute_type="int8", device="cpu", **asr)
    params["extract_text"].update(device="cpu", precision="fp32")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _run(root: Path, cache: Path, *argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *argv], cwd=root, env=_env(root, cache), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_given_mode_copies_the_text_without_loading_whisper(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["a", "b"], "path": ["", ""], "text": ["hello there", ""], "label": ["ang", "hap"]}).to_csv(
        tmp_path / "utterances.csv", index=False)
    params = _params(tmp_path, mode="given")
    probe = ("import runpy, sys; sys.argv = ['transcribe', '--table', 'utterances.csv', '--out', 'texts.csv', "
             f"'--report', 'texts.json', '--params', '{params}']; runpy.run_path('{ROOT}/stages/transcribe.py', "
             "run_name='__main__'); print('faster_whisper loaded:', 'faster_whisper' in sys.modules)")
    result = _run(tmp_path, tmp_path / "cache", "-c", probe)
    assert "faster_whisper loaded: False" in result.stdout
    texts = pd.read_csv(tmp_path / "texts.csv", keep_default_na=False)
    assert texts.to_dict("list") == {"id": ["a", "b"], "text": ["hello there", ""], "text_source": ["given", "none"],
                                     "language": ["", ""]}
    report = json.loads((tmp_path / "texts.json").read_text())
    assert report["asr"] is None and report["by_source"] == {"given": 1, "none": 1} and report["mlflow_run_id"]


@pytest.mark.slow
def test_transcribe_then_extract_text_carries_the_asr_into_the_embeddings(whisper_home: Path, spoken_clips,
                                                                          tmp_path: Path) -> None:
    from mmser.embeddings import load_embeddings

    rows = [{"id": f"u{i}", "path": str(path), "text": sentence, "label": CLASSES[i]}
            for i, (path, sentence) in enumerate(spoken_clips)]
    pd.DataFrame(rows).to_csv(tmp_path / "utterances.csv", index=False)
    params = _params(tmp_path, mode="asr", language="en")
    stage = ["--table", "utterances.csv", "--out", "texts.csv", "--report", "texts.json", "--params", str(params)]
    _run(tmp_path, whisper_home, str(ROOT / "stages/transcribe.py"), *stage)
    texts = pd.read_csv(tmp_path / "texts.csv", keep_default_na=False)
    assert texts["text_source"].tolist() == ["asr"] * 4 and texts["language"].tolist() == ["en"] * 4
    report = json.loads((tmp_path / "texts.json").read_text())
    assert report["wer_vs_given"]["utterances"] == 4 and report["wer_vs_given"]["wer"] <= 0.15
    assert report["asr"]["language"] == "en" and report["cache_misses"] == 4 and report["real_time_factor"] > 0
    _run(tmp_path, whisper_home, str(ROOT / "stages/transcribe.py"), *stage)  # a rerun transcribes nothing
    assert json.loads((tmp_path / "texts.json").read_text())["cache_hits"] == 4

    extract = [str(ROOT / "stages/extract_text.py"), "--texts", "texts.csv", "--texts-report", "texts.json",
               "--out", "text.npz", "--info", "text.json", "--params", str(params)]
    _run(tmp_path, whisper_home, *extract)
    ids, vectors, identity = load_embeddings(tmp_path / "text.npz")
    assert ids == ["u0", "u1", "u2", "u3"] and identity["asr"] == report["asr"] and vectors[0].shape == (1, 384)

    # A corpus without transcripts (and no ASR): an embedding file with no rows, said so in the info.
    pd.DataFrame({"id": ["a", "b"], "path": ["x.wav", "y.wav"], "text": ["", ""], "label": ["ang", "hap"]}).to_csv(
        tmp_path / "utterances.csv", index=False)
    _run(tmp_path, whisper_home, str(ROOT / "stages/transcribe.py"), *stage[:-1], str(_params(tmp_path, mode="given")))
    _run(tmp_path, whisper_home, *extract)
    ids, vectors, identity = load_embeddings(tmp_path / "text.npz")
    assert ids == [] and vectors == [] and "asr" not in identity and identity["dim"] == 384
    assert json.loads((tmp_path / "text.json").read_text())["without_text"] == 2


def _text_model(directory: Path, asr: dict | None) -> Path:
    """A random text head over the packaged MiniLM, its card naming `asr` as the maker of its training texts."""
    from mmser.encoders.text import TextEncoder
    from mmser.models.module import EmotionClassifier

    encoder = TextEncoder(model="all-MiniLM-L6-v2", pooling="mean", max_length=128, device="cpu", precision="fp32")
    torch.manual_seed(0)
    model = EmotionClassifier(text_dim=384, audio_dim=None, classes=CLASSES, text_proj_dim=16, hidden_dim=8,
                              dropout=0.5, lr=1e-3, step_size=30, gamma=0.1)
    model.text_norm.fit(torch.from_numpy(encoder.encode(["one sentence", "another one here"], progress=False)))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    text_identity = {**encoder.identity(), **({"asr": asr} if asr else {})}
    card = {"encoders": {"text": text_identity}, "audio_pooling": "sum", "sample_rate": 16000, "classes": CLASSES,
            "modality": "text"}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_predict_transcribes_a_clip_with_the_asr_of_training(transcriber: Transcriber, whisper_cache: Path,
                                                             spoken_clips, tmp_path: Path, capsys) -> None:
    from mmser.cli import main
    from mmser.predict import Predictor

    asr = transcriber.identity()
    checkpoint = _text_model(tmp_path / "asr", asr)
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.transcribes and predictor.inputs == ["text", "audio_path"]
    (path, sentence), (other, _) = spoken_clips[0], spoken_clips[1]
    results = predictor.predict([{"audio_path": str(path)}, {"text": "we won the cup", "audio_path": str(other)},
                                 {"text": None, "audio_path": None}])
    assert word_error_rate([sentence], [results[0]["transcript"]])["wer"] == 0.0 and results[0]["label"] in CLASSES
    assert results[1]["transcript"] == "we won the cup"  # a given text is used as it is
    assert results[2]["label"] is None and "audio" in results[2]["error"]
    typed = predictor.predict([{"text": results[0]["transcript"]}])[0]
    assert typed["probs"] == pytest.approx(results[0]["probs"], rel=1e-4)  # same text, same answer, ASR or typed

    assert main(["predict", "--model", str(checkpoint), "--audio", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["label"] in CLASSES and printed["transcript"] == results[0]["transcript"]

    given_only = Predictor.from_checkpoint(_text_model(tmp_path / "given", None))
    assert not given_only.transcribes
    assert given_only.predict([{"audio_path": str(path)}])[0]["error"] == "empty text"

    # The card's ASR must be rebuilt exactly (here: other weights under the same name), or prediction refuses.
    with pytest.raises(ValueError, match="weights_sha256: card '0000000000000000', here 'd01c3014881c9c6f'"):
        transcriber_from_identity({**asr, "weights_sha256": "0" * 16})


def test_served_model_signature_takes_audio_alone_when_it_transcribes(transcriber: Transcriber,
                                                                       whisper_cache: Path, spoken_clips,
                                                                       tmp_path: Path) -> None:
    from mmser.pyfunc import EmotionModel, model_signature

    signature = model_signature(["text", "audio_path"], CLASSES, optional=("text",))
    inputs = {c.name: c.required for c in signature.inputs.inputs}
    assert inputs == {"text": False, "audio_path": True}
    assert "transcript" in [c.name for c in signature.outputs.inputs]
    checkpoint = _text_model(tmp_path / "asr", transcriber.identity())

    class Context:
        artifacts = {"checkpoint": str(checkpoint), "card": str(checkpoint.with_suffix(".json"))}
        model_config: dict = {}

    model = EmotionModel()
    model.load_context(Context())
    out = model.predict(None, pd.DataFrame({"audio_path": [str(spoken_clips[0][0])]}))
    assert out.loc[0, "label"] in CLASSES and out.loc[0, "error"] is None
    assert word_error_rate([spoken_clips[0][1]], [out.loc[0, "transcript"]])["wer"] == 0.0
    assert np.isclose(sum(out.loc[0, f"p_{c}"] for c in CLASSES), 1.0)
