"""The SERVER head's exact layers and shapes, the train-part standardiser, and embedding files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmser.embeddings import load_embeddings, pool, save_embeddings
from mmser.models.server import Dropout, ServerHead, Standardizer


def _head(text_dim: int | None, audio_dim: int | None) -> ServerHead:
    torch.manual_seed(0)
    return ServerHead(text_dim=text_dim, audio_dim=audio_dim, n_classes=4).eval()


def test_fusion_shapes() -> None:
    head = _head(768, 128)
    assert head(text=torch.randn(5, 768), audio=torch.randn(5, 128)).shape == (5, 4)
    assert head.text_proj.in_features == 768 and head.text_proj.out_features == 128
    assert head.hidden.in_features == 256  # 128 projected text + 128 audio
    assert head.hidden.out_features == 64
    assert head.out.in_features == 64 and head.out.out_features == 4


def test_text_only_shapes() -> None:
    head = _head(768, None)
    assert head(text=torch.randn(3, 768)).shape == (3, 4)
    assert head.hidden.in_features == 128


def test_audio_only_shapes() -> None:
    head = _head(None, 88)
    assert head.text_proj is None
    assert head(audio=torch.randn(3, 88)).shape == (3, 4)
    assert head.hidden.in_features == 88


def test_no_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="text or an audio"):
        ServerHead(text_dim=None, audio_dim=None, n_classes=4)


def test_exactly_the_papers_layers() -> None:
    head = _head(768, 128)
    modules = [m for m in head.modules() if m is not head]
    assert [type(m) for m in modules] == [nn.Linear, Dropout, nn.Linear, nn.Linear]  # Dropout: an nn.Dropout
    linears = [(m.in_features, m.out_features) for m in modules if isinstance(m, nn.Linear)]
    assert linears == [(768, 128), (256, 64), (64, 4)]
    assert head.dropout.p == 0.5
    # No activation anywhere: in eval mode the head is one affine map, so it is additive in its inputs.
    text, audio = torch.randn(2, 768), torch.randn(2, 128)
    zero_t, zero_a = torch.zeros(2, 768), torch.zeros(2, 128)
    with torch.no_grad():
        lhs = head(text=text, audio=audio) + head(text=zero_t, audio=zero_a)
        rhs = head(text=text, audio=zero_a) + head(text=zero_t, audio=audio)
    torch.testing.assert_close(lhs, rhs, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in head.parameters()) == 768 * 128 + 128 + 256 * 64 + 64 + 64 * 4 + 4


def test_fusion_concatenates_text_then_audio() -> None:
    head = _head(768, 128)
    text, audio = torch.randn(2, 768), torch.randn(2, 128)
    with torch.no_grad():
        fused = torch.cat([head.text_proj(text), audio], dim=-1)
        expected = head.out(head.hidden(fused))
        torch.testing.assert_close(head(text=text, audio=audio), expected)


def test_dropout_is_active_only_in_training() -> None:
    head = _head(768, 128)
    text, audio = torch.randn(4, 768), torch.randn(4, 128)
    with torch.no_grad():
        torch.testing.assert_close(head(text=text, audio=audio), head(text=text, audio=audio))
        head.train()
        torch.manual_seed(1)
        a = head(text=text, audio=audio)
        b = head(text=text, audio=audio)
    assert not torch.allclose(a, b)


def test_standardizer_fits_on_train_only() -> None:
    torch.manual_seed(0)
    train = torch.randn(200, 5) * torch.tensor([1.0, 10.0, 1e4, 0.01, 1.0]) + torch.tensor([0.0, 5.0, -3e4, 1.0, 2.0])
    train[:, 4] = 7.0  # a constant feature
    scaler = Standardizer(5).fit(train)
    z = scaler(train)
    torch.testing.assert_close(z.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(z[:, :4].std(0), torch.ones(4), atol=1e-4, rtol=0)
    assert scaler.std[4] == 1.0
    assert torch.all(z[:, 4] == 0.0)
    # Statistics live in buffers, so a checkpoint carries them and new data is scaled the same way.
    state = scaler.state_dict()
    assert set(state) == {"mean", "std"}
    restored = Standardizer(5)
    restored.load_state_dict(state)
    other = torch.randn(3, 5)
    torch.testing.assert_close(restored(other), (other - train.mean(0)) / scaler.std)


def test_embeddings_roundtrip_with_variable_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = ["a", "b", "c", "d"]
    vectors = [rng.standard_normal((n, 6)).astype(np.float32) for n in (3, 1, 7, 2)]
    identity = {"encoder": "vggish", "dim": 6, "postprocess": True}
    path = tmp_path / "sub" / "audio.npz"
    save_embeddings(path, ids, vectors, identity)
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp*"))

    got_ids, got_vectors, got_identity = load_embeddings(path)
    assert got_ids == ids
    assert got_identity == identity
    assert [v.shape for v in got_vectors] == [(3, 6), (1, 6), (7, 6), (2, 6)]
    for want, got in zip(vectors, got_vectors):
        np.testing.assert_array_equal(got, want)


def test_save_embeddings_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 ids but 1 embeddings"):
        save_embeddings(tmp_path / "x.npz", ["a", "b"], [np.zeros((1, 3))], {"dim": 3})


def test_pool_sum_and_mean() -> None:
    frames = [np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([[10.0, -2.0]])]
    np.testing.assert_array_equal(pool(frames, "sum"), [[9.0, 12.0], [10.0, -2.0]])
    np.testing.assert_array_equal(pool(frames, "mean"), [[3.0, 4.0], [10.0, -2.0]])
    assert pool(frames, "sum").dtype == np.float32


def test_pool_mean_std_and_padding() -> None:
    from mmser.embeddings import pad_frames

    frames = [np.array([[1.0, 2.0], [3.0, 6.0]]), np.array([[10.0, -2.0]])]
    np.testing.assert_allclose(pool(frames, "mean_std"), [[2.0, 4.0, 1.0, 2.0], [10.0, -2.0, 0.0, 0.0]])
    padded, lengths = pad_frames(frames)
    assert padded.shape == (2, 2, 2) and lengths.tolist() == [2, 1]
    np.testing.assert_array_equal(padded[1], [[10.0, -2.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="attention pools inside the model"):
        pool(frames, "attention")


def test_dropout_zeroes_a_fraction_p_and_scales_the_rest_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.ones(200, 500)
    drop = Dropout(0.3).train()
    y = drop(x)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(float(y.mean()) - 1.0) < 0.02  # the expectation is kept
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
