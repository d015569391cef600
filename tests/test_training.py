"""Training on cached embeddings: determinism, the epoch chosen on validation, heads, weight decay, class weights,
the candidate sweep chosen on validation, the refit, and the logistic-regression baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmser.baseline import logistic_baseline
from mmser.features import Features, speaker_standardize
from mmser.models.module import EmotionClassifier
from mmser.selection import candidate_grid, predict_ids, refit_epochs, select, train_candidates, train_modality
from mmser.training import fit_head, inverse_frequency_weights, make_fabric, save_model

CLASSES = ["ang", "hap", "sad", "neu"]
HEAD = dict(text_proj_dim=16, hidden_dim=8, dropout=0.5, lr=1e-2, step_size=30, gamma=0.1)


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


@pytest.fixture(scope="module")
def fabric():
    fabric = make_fabric()
    fabric.launch()
    return fabric


def _fit(fabric, *, head: str = "server", modality: str = "fusion", features=None, fold=None, **extra):
    if features is None:
        features, fold = _features()
    options = dict(head_kwargs=HEAD, epochs=6, batch_size=8, standardize=True, class_weights=False,
                   early_stopping=0) | extra
    return fit_head(fabric, features, train_ids=fold["train"], val_ids=fold["val"], modality=modality,
                    classes=CLASSES, seed=7, head=head, weight_decay=options.pop("weight_decay", 0.0), **options)


def _state(model) -> dict[str, torch.Tensor]:
    return model.state_dict()


def test_same_params_and_data_give_identical_weights_and_history(fabric) -> None:
    first, second = _fit(fabric), _fit(fabric)
    wa, wb = _state(first.model), _state(second.model)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert first.history == second.history and first.best_epoch == second.best_epoch


def test_the_kept_epoch_is_the_first_best_on_validation_and_reproduces_its_score(fabric) -> None:
    features, fold = _features()
    fit = _fit(fabric, features=features, fold=fold)
    select_scores = [h["val_select"] for h in fit.history]
    assert fit.best_epoch == int(np.argmax(select_scores)) + 1
    assert fit.best_val_ua == fit.history[fit.best_epoch - 1]["val_ua"]
    # The returned model is that epoch's: its validation predictions give that UA again.
    from mmser.metrics import confusion, unweighted_accuracy

    probs = predict_ids(fit.model, features, fold["val"], "fusion")
    y = features.y[features.rows(fold["val"])]
    assert unweighted_accuracy(confusion(y, probs.argmax(1), 4)) == pytest.approx(fit.best_val_ua)
    # The standardiser was fitted on the training part only and travels in the checkpoint.
    train_audio = torch.from_numpy(features.audio[features.rows(fold["train"])])
    assert torch.allclose(fit.model.audio_norm.mean, train_audio.mean(0))


def test_checkpoint_round_trip(fabric, tmp_path: Path) -> None:
    features, fold = _features()
    fit = _fit(fabric, features=features, fold=fold, head="linear")
    save_model(fit.model, tmp_path / "m" / "model.ckpt")
    loaded = EmotionClassifier.load_from_checkpoint(tmp_path / "m" / "model.ckpt", map_location="cpu")
    assert np.array_equal(predict_ids(loaded, features, fold["test"], "fusion"),
                          predict_ids(fit.model, features, fold["test"], "fusion"))


@pytest.mark.parametrize("head", ["linear", "server", "gated", "late"])
@pytest.mark.parametrize("modality", ["text", "audio", "fusion"])
def test_every_head_trains_on_every_modality(fabric, head: str, modality: str) -> None:
    fit = _fit(fabric, head=head, modality=modality)
    assert 0.0 <= fit.best_val_ua <= 1.0 and len(fit.history) == 6


def test_linear_head_is_one_affine_map_of_the_concatenated_inputs() -> None:
    from mmser.models.heads import LinearHead

    head = LinearHead(text_dim=3, audio_dim=2, n_classes=4)
    text, audio = torch.randn(5, 3), torch.randn(5, 2)
    expected = torch.cat([text, audio], 1) @ head.out.weight.T + head.out.bias
    assert torch.allclose(head(text=text, audio=audio), expected)
    assert sum(p.numel() for p in head.parameters()) == 5 * 4 + 4


def test_weight_decay_shrinks_the_weights(fabric) -> None:
    plain, decayed = _fit(fabric, head="linear", epochs=30), _fit(fabric, head="linear", epochs=30, weight_decay=0.5)
    assert decayed.model.head.out.weight.norm() < 0.7 * plain.model.head.out.weight.norm()


def test_early_stopping_stops_when_validation_stops_improving(fabric) -> None:
    # lr 0: validation never improves after epoch 1, so patience 1 stops after epoch 2 (of 6).
    assert len(_fit(fabric, early_stopping=1, head_kwargs={**HEAD, "lr": 0.0}).history) == 2
    assert len(_fit(fabric, early_stopping=0, head_kwargs={**HEAD, "lr": 0.0}).history) == 6


def test_inverse_frequency_weights() -> None:
    weights = inverse_frequency_weights(np.array([0, 0, 0, 1]), 3)
    assert weights == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_sweep_selects_the_best_mean_validation_ua_and_refits_on_everything(fabric) -> None:
    features, fold = _features()
    fold2 = {**fold, "name": "fold2", "train": fold["train"][10:] + fold["test"][:10],
             "test": fold["test"][10:] + fold["train"][:10]}
    candidates = candidate_grid(["linear", "server"], [0.0, 0.1])
    assert [c.name for c in candidates] == ["linear/wd=0", "linear/wd=0.1", "server/wd=0", "server/wd=0.1"]
    options = dict(head_kwargs=HEAD, epochs=5, batch_size=8, standardize=True, class_weights=False, early_stopping=0)
    result = train_modality(fabric, features, [fold, fold2], modality="fusion", candidates=candidates,
                            classes=CLASSES, seed=7, options=options)
    preds = result.sweep.predictions
    assert set(preds["candidate"]) == {c.name for c in candidates}
    assert len(preds) == len(candidates) * 2 * (len(fold["val"]) + len(fold["test"]))
    # Validation UA per candidate is the mean of its folds' kept-epoch UAs; the chosen one maximises it.
    for c in candidates:
        fold_uas = [r["val_ua"] for r in result.sweep.records if r["candidate"] == c.name]
        assert result.val_means[c.name] == pytest.approx(np.mean(fold_uas))
    assert result.val_means[result.chosen.name] == max(result.val_means.values())
    assert result.epochs == refit_epochs(result.sweep.records, result.chosen)
    assert len(result.final.history) == result.epochs and result.final.best_val_ua is None
    # The refit's standardiser saw every labelled utterance.
    assert torch.allclose(result.final.model.audio_norm.mean, torch.from_numpy(features.audio).mean(0), atol=1e-3)


def test_selection_ignores_test_scores() -> None:
    import pandas as pd

    candidates = candidate_grid(["linear", "server"], [0.0])
    rows = []
    # linear: perfect on test, poor on validation; server: the reverse. Validation decides.
    for name, val_right, test_right in (("linear/wd=0", False, True), ("server/wd=0", True, False)):
        for split, right in (("val", val_right), ("test", test_right)):
            for i in range(8):
                rows.append({"candidate": name, "fold": "fold1", "split": split, "true_idx": i % 4,
                             "pred_idx": i % 4 if right else (i + 1) % 4})
    chosen, means = select(pd.DataFrame(rows), candidates, 4)
    assert chosen.name == "server/wd=0" and means == {"linear/wd=0": 0.0, "server/wd=0": 1.0}


def test_logistic_baseline_chooses_c_on_validation_and_predicts_test() -> None:
    features, fold = _features(n=120)
    preds, info = logistic_baseline(features, [fold], modality="fusion", classes=CLASSES, c_grid=[1e-4, 1.0],
                                    class_weights=False, seed=0)
    assert info["val_ua_by_C"][str(info["C"])] == max(info["val_ua_by_C"].values())
    test = preds[preds["split"] == "test"]
    assert list(test["id"]) == fold["test"] and np.allclose(test[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1.0)
    # The same scaler + regression fitted by hand on the training part gives the same test predictions.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = lambda ids: features.pooled(features.rows(ids), "fusion")  # noqa: E731
    model = make_pipeline(StandardScaler(), LogisticRegression(C=info["C"], max_iter=2000, random_state=0))
    model.fit(x(fold["train"]), features.y[features.rows(fold["train"])])
    assert np.array_equal(test["pred_idx"].to_numpy(), model.predict(x(fold["test"])))


def test_speaker_standardize_uses_each_speakers_own_statistics() -> None:
    values = np.array([[1.0, 10.0], [3.0, 30.0], [100.0, 0.0], [300.0, 2.0]], dtype=np.float32)
    out = speaker_standardize(values, ["a", "a", "b", "b"])
    assert np.allclose(out, [[-1, -1], [1, 1], [-1, -1], [1, 1]])
    frames = np.zeros((2, 3, 1), dtype=np.float32)
    frames[0, :2, 0] = [1.0, 3.0]
    frames[1, :1, 0] = [5.0]
    normed = speaker_standardize(frames, ["a", "a"], np.array([2, 1]))
    real = np.array([1.0, 3.0, 5.0])
    assert np.allclose(normed[0, :2, 0], (real[:2] - real.mean()) / real.std())
    assert normed[1, 1:, 0].tolist() == [0.0, 0.0]  # padding untouched


def test_attention_pool_ignores_padding() -> None:
    from mmser.models.heads import AttentionPool

    torch.manual_seed(0)
    pool = AttentionPool(4)
    frames = torch.randn(1, 3, 4)
    padded = torch.cat([frames, torch.full((1, 5, 4), 1e3)], dim=1)  # garbage after the real frames
    assert torch.allclose(pool(frames, torch.tensor([3])), pool(padded, torch.tensor([3])), atol=1e-6)
    single = pool(frames[:, :1], torch.tensor([1]))
    assert torch.allclose(single, frames[:, 0])  # one frame: its weight is 1


def test_attention_pooling_trains_on_variable_length_frames(fabric) -> None:
    from mmser.embeddings import pad_frames

    features, fold = _features()
    rng = np.random.default_rng(1)
    frames = [np.repeat(a[None], n, axis=0) + rng.normal(size=(n, a.shape[0])).astype(np.float32)
              for a, n in zip(features.audio, rng.integers(1, 6, len(features.audio)))]
    padded, lengths = pad_frames(frames)
    attn = Features(features.ids, [CLASSES[i] for i in features.y], CLASSES, features.text, padded,
                    audio_lengths=lengths)
    fit = _fit(fabric, features=attn, fold=fold, epochs=4, audio_pooling="attention")
    train_frames = np.concatenate([frames[i] for i in attn.rows(fold["train"])])
    assert np.allclose(fit.model.audio_norm.mean.numpy(), train_frames.mean(0), atol=1e-4)  # real frames only
    probs = predict_ids(fit.model, attn, fold["test"], "fusion")
    assert probs.shape == (len(fold["test"]), 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # The baseline mean-pools each utterance's real frames.
    pooled = attn.pooled(attn.rows(fold["test"][:2]), "audio")
    assert np.allclose(pooled, [frames[attn.index[u]].mean(0) for u in fold["test"][:2]], atol=1e-5)
