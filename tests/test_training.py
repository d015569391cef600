"""Training on cached embeddings: determinism, checkpoint choice, outputs, heads and class weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmser.models.module import EmotionClassifier
from mmser.training import Features, inverse_frequency_weights, train_one
from mmser.tracking import parent_run

CLASSES = ["ang", "hap", "sad", "neu"]


def _features(n: int = 80, seed: int = 0) -> tuple[Features, dict]:
    """Separable random features: the class shifts both modalities."""
    rng = np.random.default_rng(seed)
    labels = [CLASSES[i % 4] for i in range(n)]
    y = np.array([i % 4 for i in range(n)])
    text = (rng.normal(size=(n, 12)) + np.eye(4)[y] @ rng.normal(size=(4, 12)) * 2).astype(np.float32)
    audio = (rng.normal(size=(n, 6)) * 50 + 100).astype(np.float32)
    ids = [f"u{i:03d}" for i in range(n)]
    fold = {"name": "fold1", "held_out": "x", "train": ids[:50], "val": ids[50:65], "test": ids[65:]}
    return Features(ids, labels, CLASSES, text, audio), fold


def _train(tmp_path: Path, out: str, *, head: str = "server", modality: str = "fusion", lr: float = 1e-2,
           **extra) -> dict:
    features, fold = _features()
    params_file = tmp_path / "params.yaml"
    params_file.write_text("x: 1\n")
    parent = parent_run("test", {"x": "1"}, params_file)
    kwargs = dict(standardize=True, class_weights=False, early_stopping=0) | extra
    return train_one(features, fold, modality=modality, classes=CLASSES, out_dir=tmp_path / out, seed=7, head=head,
                     head_kwargs=dict(text_proj_dim=16, hidden_dim=8, dropout=0.5, lr=lr, step_size=30, gamma=0.1),
                     epochs=6, batch_size=8, tracking={"experiment": "test", "params": {"p": "1"}, "inputs": {},
                                                       "parent": parent},
                     card={"encoders": {}, "audio_pooling": "sum", "sample_rate": 16000}, **kwargs)


@pytest.fixture(autouse=True)
def _tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_same_params_and_data_give_identical_weights_and_history(tmp_path: Path) -> None:
    first, second = _train(tmp_path, "a"), _train(tmp_path, "b")
    wa, wb = _weights(tmp_path / "a" / "model.ckpt"), _weights(tmp_path / "b" / "model.ckpt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "history.csv").read_text() == (tmp_path / "b" / "history.csv").read_text()
    assert first["best_epoch"] == second["best_epoch"] and first["run_id"] != second["run_id"]


def test_outputs_and_checkpoint_chosen_on_validation(tmp_path: Path) -> None:
    record = _train(tmp_path, "m")
    out = tmp_path / "m"
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "model.ckpt", "model.json", "run.json"]
    card = json.loads((out / "model.json").read_text())
    assert card["classes"] == CLASSES and card["modality"] == "fusion" and card["head"] == "server"
    history = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    header, rows = history[0], history[1:]
    select = [float(r[header.index("val_select")]) for r in rows]
    assert record["best_epoch"] == int(np.argmax(select)) + 1  # first epoch with the best selection score
    # The standardiser was fitted on the training part only and travels in the checkpoint.
    model = EmotionClassifier.load_from_checkpoint(out / "model.ckpt", map_location="cpu")
    features, fold = _features()
    train_audio = torch.from_numpy(features.audio[features.rows(fold["train"])])
    assert torch.allclose(model.audio_norm.mean, train_audio.mean(0))


@pytest.mark.parametrize("head", ["server", "gated", "late"])
@pytest.mark.parametrize("modality", ["text", "audio", "fusion"])
def test_every_head_trains_on_every_modality(tmp_path: Path, head: str, modality: str) -> None:
    record = _train(tmp_path, f"{head}-{modality}", head=head, modality=modality)
    assert 0.0 <= record["best_val_ua"] <= 1.0


def test_early_stopping_stops_when_validation_stops_improving(tmp_path: Path) -> None:
    # lr 0: validation never improves after epoch 1, so patience 1 stops after epoch 2 (of 6).
    assert _train(tmp_path, "es", early_stopping=1, lr=0.0)["epochs_run"] == 2
    assert _train(tmp_path, "full", early_stopping=0, lr=0.0)["epochs_run"] == 6


def test_inverse_frequency_weights() -> None:
    weights = inverse_frequency_weights(np.array([0, 0, 0, 1]), 3)
    assert weights == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_attention_pool_ignores_padding() -> None:
    from mmser.models.heads import AttentionPool

    torch.manual_seed(0)
    pool = AttentionPool(4)
    frames = torch.randn(1, 3, 4)
    padded = torch.cat([frames, torch.full((1, 5, 4), 1e3)], dim=1)  # garbage after the real frames
    assert torch.allclose(pool(frames, torch.tensor([3])), pool(padded, torch.tensor([3])), atol=1e-6)
    single = pool(frames[:, :1], torch.tensor([1]))
    assert torch.allclose(single, frames[:, 0])  # one frame: its weight is 1


def test_attention_pooling_trains_on_variable_length_frames(tmp_path: Path) -> None:
    from mmser.embeddings import pad_frames
    from mmser.evaluation import predict_fold

    features, fold = _features()
    rng = np.random.default_rng(1)
    frames = [np.repeat(a[None], n, axis=0) + rng.normal(size=(n, a.shape[0])).astype(np.float32)
              for a, n in zip(features.audio, rng.integers(1, 6, len(features.audio)))]
    padded, lengths = pad_frames(frames)
    attn = Features(list(features.index), [CLASSES[i] for i in features.y], CLASSES, features.text, padded,
                    audio_lengths=lengths)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("x: 1\n")
    record = train_one(attn, fold, modality="fusion", classes=CLASSES, out_dir=tmp_path / "attn", seed=7,
                       head="server", head_kwargs=dict(text_proj_dim=16, hidden_dim=8, dropout=0.5, lr=1e-2,
                                                       step_size=30, gamma=0.1),
                       epochs=4, batch_size=8, standardize=True, class_weights=False, early_stopping=0,
                       tracking=None, card={}, audio_pooling="attention")
    assert record["run_id"] is None  # tracking=None logs nothing
    model = EmotionClassifier.load_from_checkpoint(tmp_path / "attn" / "model.ckpt", map_location="cpu")
    train_frames = np.concatenate([frames[i] for i in attn.rows(fold["train"])])
    assert np.allclose(model.audio_norm.mean.numpy(), train_frames.mean(0), atol=1e-4)  # real frames only
    probs = predict_fold(str(tmp_path / "attn" / "model.ckpt"), attn, fold["test"], "fusion")
    assert probs.shape == (len(fold["test"]), 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
