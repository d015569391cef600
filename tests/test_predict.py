"""`mmser predict`: a checkpoint and its card embed new inputs exactly as training did; bad rows fail alone."""

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
import soundfile as sf
import torch

from mmser.cli import main
from mmser.data.audio import load_audio
from mmser.embeddings import pool
from mmser.models.module import EmotionClassifier
from mmser.predict import ModelMismatchError, Predictor

CLASSES = ["ang", "hap", "sad", "neu"]
TEXTS = ["I can't believe you did that!", "We won, this is great.", "I lost the money this week.",
         "The weather is mild today.", "You did not call me back.", "Okay, that is fine."]


def _voice(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    """A harmonic tone with vibrato and a little noise: enough for openSMILE to find a pitch."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_clips(directory: Path) -> dict[str, Path]:
    """Good clips (16 kHz mono; 44.1 kHz stereo), a silent one and one that is not audio at all."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = {"a": directory / "a.wav", "b": directory / "b.wav", "silent": directory / "silent.wav",
             "broken": directory / "broken.wav"}
    sf.write(clips["a"], _voice(1.2, 16000, 140.0, 0), 16000)
    stereo = _voice(1.5, 44100, 230.0, 1)
    sf.write(clips["b"], np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    sf.write(clips["silent"], np.zeros(16000, dtype=np.float32), 16000)
    clips["broken"].write_bytes(b"RIFF\x00\x00not really a wav file")
    return clips


def build_models(directory: Path) -> dict:
    """Random heads for text, audio and fusion over the real default encoders, saved as checkpoint + card.

    The standardisers are fitted on the clips' and texts' own embeddings, so probabilities are not saturated.
    """
    from mmser.encoders.text import TextEncoder
    from mmser.extract import build_audio_encoder

    clips = write_clips(directory / "clips")
    text_encoder = TextEncoder(model="all-MiniLM-L6-v2", pooling="mean", max_length=128, device="cpu")
    audio_encoder = build_audio_encoder(encoder="egemaps", sample_rate=16000, vggish_weights_dir=None,
                                        postprocess=True, batch_size=64, device="cpu")
    text_emb = torch.from_numpy(text_encoder.encode(TEXTS, progress=False))
    audio_emb = torch.from_numpy(pool(audio_encoder.encode([load_audio(str(clips[k])) for k in ("a", "b")]), "sum"))
    card = {"encoders": {"text": text_encoder.identity(), "audio": audio_encoder.identity()},
            "audio_pooling": "sum", "sample_rate": 16000, "classes": CLASSES}
    checkpoints = {}
    for seed, modality in enumerate(("text", "audio", "fusion")):
        torch.manual_seed(seed)
        model = EmotionClassifier(text_dim=384 if modality != "audio" else None,
                                  audio_dim=88 if modality != "text" else None, classes=CLASSES, text_proj_dim=16,
                                  hidden_dim=8, dropout=0.5, lr=1e-3, step_size=30, gamma=0.1)
        if model.text_norm is not None:
            model.text_norm.fit(text_emb)
        if model.audio_norm is not None:
            model.audio_norm.fit(audio_emb)
        path = directory / f"{modality}_fold1.ckpt"
        # What Lightning's ModelCheckpoint writes, minus the trainer state prediction never reads.
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                    "pytorch-lightning_version": lightning.__version__}, path)
        path.with_suffix(".json").write_text(json.dumps(
            {**card, "modality": modality, "fold": "fold1", "checkpoint": path.name}, indent=2))
        checkpoints[modality] = path
    return {"clips": clips, "checkpoints": checkpoints, "text_encoder": text_encoder,
            "audio_encoder": audio_encoder}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_models(tmp_path_factory.mktemp("predict"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_checkpoint_loads_and_embeds_as_training(models: dict) -> None:
    """The predictor's probabilities equal the head applied to embeddings made the way extraction makes them."""
    predictor = Predictor.from_checkpoint(models["checkpoints"]["fusion"])
    clips = models["clips"]
    rows = [{"text": TEXTS[0], "audio_path": str(clips["a"])}, {"text": TEXTS[1], "audio_path": str(clips["b"])}]
    results = predictor.predict(rows)

    model = EmotionClassifier.load_from_checkpoint(models["checkpoints"]["fusion"], map_location="cpu")
    text = torch.from_numpy(models["text_encoder"].encode(TEXTS[:2], progress=False))
    waves = [load_audio(str(clips[k]), 16000) for k in ("a", "b")]
    audio = torch.from_numpy(pool(models["audio_encoder"].encode(waves), "sum"))
    expected = model.predict_proba(text, audio)
    for result, probs in zip(results, expected):
        assert result["error"] is None
        assert list(result["probs"]) == CLASSES
        np.testing.assert_allclose(list(result["probs"].values()), probs, rtol=1e-5, atol=1e-7)
        assert result["label"] == CLASSES[int(np.argmax(probs))]
        assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert results[0]["probs"] != results[1]["probs"]
    assert max(expected[0]) < 0.99  # not saturated: the comparison above means something


def test_single_input_prints_one_json_object(models: dict, capsys) -> None:
    code, out, _ = _run(capsys, "--model", str(models["checkpoints"]["fusion"]), "--audio", str(models["clips"]["a"]),
                        "--text", TEXTS[0])
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"label", "probs"} and list(result["probs"]) == CLASSES
    assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["label"] == max(result["probs"], key=result["probs"].get)
    [same] = Predictor.from_checkpoint(models["checkpoints"]["fusion"]).predict(
        [{"text": TEXTS[0], "audio_path": str(models["clips"]["a"])}])
    assert result["probs"] == same["probs"]


def test_csv_reports_bad_rows_per_row(models: dict, tmp_path: Path, capsys) -> None:
    clips = models["clips"]
    manifest = clips["a"].parent / "many.csv"  # relative paths are relative to the CSV's folder
    pd.DataFrame({"id": ["ok", "abs", "missing", "broken", "silent", "no_text"],
                  "path": ["a.wav", str(clips["b"]), "nowhere.wav", "broken.wav", "silent.wav", "a.wav"],
                  "text": [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3], TEXTS[4], "  "],
                  "label": ["ang"] * 6}).to_csv(manifest, index=False)
    out = tmp_path / "predictions.csv"
    code, _, err = _run(capsys, "--model", str(models["checkpoints"]["fusion"]), "--csv", str(manifest),
                        "--out", str(out))
    assert code == 0
    table = pd.read_csv(out, keep_default_na=False).set_index("id")
    assert list(table.columns) == ["path", "text", "input_label", "label", *[f"p_{c}" for c in CLASSES], "transcript",
                                   "error"]
    assert set(table["input_label"]) == {"ang"}  # the manifest's own label is kept beside the prediction
    assert table.loc["ok", "error"] == "" and table.loc["abs", "error"] == ""
    assert table.loc["missing", "error"].startswith("audio file not found")
    assert table.loc["broken", "error"].startswith("audio undecodable")
    assert table.loc["silent", "error"] == "audio silent"
    assert table.loc["no_text", "error"] == "empty text"
    assert "4 failed" in err
    for bad in ("missing", "broken", "silent", "no_text"):
        assert table.loc[bad, "label"] == "" and table.loc[bad, "p_ang"] == ""
    [single] = Predictor.from_checkpoint(models["checkpoints"]["fusion"]).predict(
        [{"text": TEXTS[1], "audio_path": str(clips["b"])}])
    np.testing.assert_allclose([float(table.loc["abs", f"p_{c}"]) for c in CLASSES],
                               list(single["probs"].values()), rtol=1e-6)
    assert table.loc["abs", "label"] == single["label"]

    code, stdout, _ = _run(capsys, "--model", str(models["checkpoints"]["fusion"]), "--csv", str(manifest))
    header = "id,path,text,input_label,label,p_ang,p_hap,p_sad,p_neu,transcript,error"
    assert code == 0 and stdout.splitlines()[0] == header
    assert len(stdout.splitlines()) == 7


def test_unimodal_models_take_only_their_input(models: dict, tmp_path: Path, capsys) -> None:
    clips = models["clips"]
    code, out, _ = _run(capsys, "--model", str(models["checkpoints"]["audio"]), "--audio", str(clips["a"]))
    assert code == 0 and sum(json.loads(out)["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = _run(capsys, "--model", str(models["checkpoints"]["text"]), "--text", TEXTS[2])
    assert code == 0 and json.loads(out)["label"] in CLASSES

    manifest = tmp_path / "audio_only.csv"
    pd.DataFrame({"path": [str(clips["a"]), str(clips["broken"])]}).to_csv(manifest, index=False)
    code, out, _ = _run(capsys, "--model", str(models["checkpoints"]["audio"]), "--csv", str(manifest))
    table = pd.read_csv(pd.io.common.StringIO(out), keep_default_na=False)
    assert code == 0 and table["error"].tolist()[0] == "" and table["error"].tolist()[1].startswith("audio undecod")

    code, _, err = _run(capsys, "--model", str(models["checkpoints"]["audio"]), "--text", TEXTS[0])
    assert code == 1 and err.strip() == "mmser predict: error: this audio model needs --audio"
    code, _, err = _run(capsys, "--model", str(models["checkpoints"]["fusion"]), "--text", TEXTS[0])
    assert code == 1 and "needs --text and --audio" in err


def test_single_bad_input_is_a_one_line_error(models: dict, tmp_path: Path, capsys) -> None:
    fusion = str(models["checkpoints"]["fusion"])
    for audio, text, expected in [(tmp_path / "nowhere.wav", TEXTS[0], "--audio: file not found"),
                                  (models["clips"]["broken"], TEXTS[0], ": undecodable: "),
                                  (models["clips"]["silent"], TEXTS[0], "audio silent"),
                                  (models["clips"]["a"], "", "--text is empty")]:
        code, out, err = _run(capsys, "--model", fusion, "--audio", str(audio), "--text", text)
        lines = [line for line in err.splitlines() if line.startswith("mmser predict")]
        assert code == 1 and out == "" and len(lines) == 1 and expected in lines[0], err
    code, _, err = _run(capsys, "--model", str(tmp_path / "absent.ckpt"), "--text", "hello")
    assert code == 1 and "not found" in err


def _with_card(models: dict, tmp_path: Path, modality: str, edit) -> Path:
    source = models["checkpoints"][modality]
    target = tmp_path / source.name
    target.write_bytes(source.read_bytes())
    card = json.loads(source.with_suffix(".json").read_text())
    edit(card)
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


@pytest.mark.parametrize("modality, edit, message", [
    ("audio", lambda c: c["encoders"]["audio"].update(opensmile="1.0.0"), "opensmile: card '1.0.0', here"),
    ("text", lambda c: c["encoders"]["text"].update(dim=768), "dim: card 768, here 384"),
    ("text", lambda c: c["encoders"]["text"].update(weights_sha256="0" * 16), "weights_sha256: card '00000000"),
    ("fusion", lambda c: c.update(classes=["neu", "sad", "hap", "ang"]), "differ from the card's"),
    ("fusion", lambda c: c.update(modality="audio"), "card says modality 'audio'"),
])
def test_mismatch_between_card_and_encoders_is_an_error(models, tmp_path, capsys, modality, edit, message) -> None:
    checkpoint = _with_card(models, tmp_path, modality, edit)
    with pytest.raises(ModelMismatchError, match=message.replace("(", r"\(")):
        Predictor.from_checkpoint(checkpoint)
    code, out, err = _run(capsys, "--model", str(checkpoint), "--audio", str(models["clips"]["a"]), "--text", "hi")
    assert code == 1 and out == "" and message in err


def test_model_folder_with_model_ckpt(models: dict, tmp_path: Path, capsys) -> None:
    """The train stage's per-run folder (model.ckpt + model.json) is accepted as --model."""
    folder = tmp_path / "text" / "fold1"
    folder.mkdir(parents=True)
    (folder / "model.ckpt").write_bytes(models["checkpoints"]["text"].read_bytes())
    (folder / "model.json").write_text(models["checkpoints"]["text"].with_suffix(".json").read_text())
    code, out, _ = _run(capsys, "--model", str(folder), "--text", TEXTS[0])
    code_ckpt, out_ckpt, _ = _run(capsys, "--model", str(models["checkpoints"]["text"]), "--text", TEXTS[0])
    assert code == code_ckpt == 0 and json.loads(out) == json.loads(out_ckpt)


def test_speaker_normalised_model_is_refused_in_one_line(models: dict, tmp_path: Path, capsys) -> None:
    """A model trained on per-speaker standardised inputs cannot score one clip: refused, not answered wrongly."""
    folder = tmp_path / "norm"
    folder.mkdir()
    (folder / "model.ckpt").write_bytes(models["checkpoints"]["text"].read_bytes())
    card = json.loads(models["checkpoints"]["text"].with_suffix(".json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "speaker_norm": True}))
    code, out, err = _run(capsys, "--model", str(folder), "--text", TEXTS[0])
    assert code == 1 and out == ""
    assert err.strip().startswith("mmser predict: error: this model was trained with train.speaker_norm")


def test_console_script_is_installed(models: dict) -> None:
    """`mmser predict` as a user runs it: the console script of the installed package."""
    script = Path(sys.executable).parent / "mmser"
    assert script.is_file(), "run `pip install -e .` to register the mmser console script"
    done = subprocess.run([str(script), "predict", "--model", str(models["checkpoints"]["fusion"]),
                           "--audio", str(models["clips"]["b"]), "--text", TEXTS[1]],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["label"] in CLASSES and sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-5)


# Runs `mmser predict` argument lists in a fresh interpreter: for each, the exit status, stderr, and which heavy
# modules were imported by then (none: the error came before torch and MLflow, which take seconds to load).
CLI = """
import contextlib, io, json, sys
from mmser.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", *argv])
    results.append({"code": code, "err": err.getvalue(),
                    "heavy": sorted(m for m in ("torch", "mlflow", "pandas", "transformers") if m in sys.modules)})
print(json.dumps(results))
"""


def cli_fresh(cases: list[list[str]], cwd: Path, env: dict) -> list[dict]:
    """Each argument list's exit status, stderr and the heavy modules imported by then (fresh interpreter)."""
    done = subprocess.run([sys.executable, "-c", CLI, json.dumps(cases)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_predict_defaults_to_the_registered_best_model(models, tmp_path: Path, monkeypatch, capsys) -> None:
    """After `make repro` (which registers models:/mmser@best), `mmser predict` needs no --model."""
    import mlflow

    from mmser.cli import main
    from mmser.pyfunc import register_best
    from mmser.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the workspace: its mlflow.db is the default store
    mlflow.set_tracking_uri(tracking_uri())
    clip, text = str(models["clips"]["a"]), "we won, this is great"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    [before] = cli_fresh([["--audio", clip, "--text", text]], tmp_path, env)
    assert before["code"] == 1 and "run `make repro`" in before["err"]

    final = tmp_path / "models" / "fusion" / "final"
    final.mkdir(parents=True)
    (final / "model.ckpt").write_bytes(models["checkpoints"]["fusion"].read_bytes())
    (final / "model.json").write_text(models["checkpoints"]["fusion"].with_suffix(".json").read_text())
    register_best({"fusion": {"selected": {"candidate": "server/wd=0", "val_ua": 0.5,
                                           "refit": {"utterances": 40, "epochs": 3}}}},
                  tmp_path / "models", registered_name="mmser", alias="best")
    assert main(["predict", "--audio", clip, "--text", text]) == 0
    by_default = json.loads(capsys.readouterr().out)
    assert main(["predict", "--model", str(models["checkpoints"]["fusion"]), "--audio", clip, "--text", text]) == 0
    assert by_default == json.loads(capsys.readouterr().out)

    [missing_text] = cli_fresh([["--audio", clip]], tmp_path, env)  # the registry's tag says: fusion
    assert missing_text["code"] == 1 and "this fusion model needs --text and --audio" in missing_text["err"]
    assert not {"torch", "mlflow"} & set(missing_text["heavy"])
    [other] = cli_fresh([["--model", "models:/mmser@champion", "--text", text]], tmp_path, env)
    assert other["code"] == 1 and "models:/mmser@champion is not registered" in other["err"]
    assert main(["predict", "--model", "runs:/0123456789abcdef/pyfunc", "--text", text]) == 1  # MLflow refuses it
    assert "Run with id=0123456789abcdef not found" in capsys.readouterr().err
