"""VGGish encoder: front-end parity with torchvggish, batching, post-processing and weight errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvggish.torchvggish import VGG, Postprocessor, make_layers
from torchvggish.vggish_input import waveform_to_examples

from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError
from mmser.encoders.vggish import (
    MIN_SAMPLES,
    VGGISH_PCA,
    VGGISH_WEIGHTS,
    VGGishEncoder,
    find_vggish_weights,
    log_mel_examples,
    n_examples,
    postprocess,
)

SR = 16000
# One example exactly, just over one, just under two, two, several with a ragged tail.
PARITY_LENGTHS = [MIN_SAMPLES, 16000, 31199, 31200, 48000, 100003]


def _noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.3).astype(np.float32)


def _sine(n: int, hz: float) -> np.ndarray:
    return (0.9 * np.sin(2 * np.pi * hz * np.arange(n) / SR)).astype(np.float32)


@pytest.fixture(scope="module")
def raw_encoder(tiny_vggish_weights: Path) -> VGGishEncoder:
    """fp32 whatever the CPU (auto may pick bf16): compared with torchvggish's fp32 forward."""
    return VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=False, batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def pp_encoder(tiny_vggish_weights: Path) -> VGGishEncoder:
    return VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=True)


@pytest.mark.parametrize("n", PARITY_LENGTHS)
@pytest.mark.parametrize("kind", ["noise", "sine"])
def test_front_end_matches_torchvggish(n: int, kind: str) -> None:
    x = _noise(n, seed=n) if kind == "noise" else _sine(n, hz=440.0 + n % 997)
    expected = waveform_to_examples(x, SR).detach().numpy()
    got = log_mel_examples(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (n_examples(n), 1, 96, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 1), (8000, 1), (MIN_SAMPLES - 1, 1), (31199, 2), (31200, 2), (SR * 60, 62)]
)
def test_example_counts_use_floor_framing_and_pad_short_clips(n: int, expected: int) -> None:
    frames = 1 + (max(n, MIN_SAMPLES) - 400) // 160
    assert n_examples(n) == expected == 1 + (frames - 96) // 96
    assert log_mel_examples(torch.zeros(n)).shape == (expected, 1, 96, 64)


def test_short_clip_is_zero_padded_to_one_example() -> None:
    x = _noise(8000, seed=1)
    padded = np.concatenate([x, np.zeros(MIN_SAMPLES - x.size, np.float32)])
    np.testing.assert_allclose(
        log_mel_examples(torch.from_numpy(x)).numpy(), waveform_to_examples(padded, SR).detach().numpy(), atol=1e-4
    )


def test_batched_encode_equals_per_utterance(raw_encoder: VGGishEncoder) -> None:
    # batch_size=4 over 1 + 2 + 3 + 1 examples: chunks straddle utterance boundaries.
    waves = [_noise(8000, 2), _sine(31200, 300.0), _noise(48000, 3), _sine(MIN_SAMPLES, 1000.0)]
    batched = raw_encoder.encode(waves)
    single = [raw_encoder.encode([w])[0] for w in waves]
    assert [b.shape for b in batched] == [(n_examples(w.size), 128) for w in waves]
    for b, s in zip(batched, single):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, s, atol=1e-5, rtol=0)
    assert raw_encoder.encode([]) == []


def test_encode_matches_torchvggish_forward(tiny_vggish_weights: Path, raw_encoder: VGGishEncoder) -> None:
    # The reference: torchvggish's own front end and VGG forward (NCHW, no channels_last, no batching).
    reference = VGG(make_layers(), postprocess=False).eval()
    reference.load_state_dict(torch.load(tiny_vggish_weights / VGGISH_WEIGHTS, weights_only=True))
    x = _noise(48000, 5)
    with torch.no_grad():
        expected = reference(waveform_to_examples(x, SR).detach()).numpy()
    np.testing.assert_allclose(raw_encoder.encode([x])[0], expected, rtol=1e-4, atol=1e-6)


def test_postprocess_is_quantised_and_matches_torchvggish(pp_encoder: VGGishEncoder, raw_encoder) -> None:
    waves = [_noise(48000, 4), _sine(16000, 440.0)]
    out = pp_encoder.encode(waves)
    assert [o.shape for o in out] == [(3, 128), (1, 128)]
    for o in out:
        assert o.dtype == np.float32
        assert o.min() >= 0 and o.max() <= 255
        np.testing.assert_array_equal(o, np.round(o))
    assert len(np.unique(np.concatenate(out))) > 10  # not everything clamped to one end

    # Same PCA + quantisation as torchvggish's Postprocessor (built without its download).
    reference = Postprocessor.__new__(Postprocessor)
    reference._pca_matrix, reference._pca_means = pp_encoder._pca
    raw = torch.from_numpy(raw_encoder.encode(waves)[0])
    np.testing.assert_array_equal(postprocess(raw, *pp_encoder._pca).numpy(), reference.postprocess(raw).numpy())


def test_identity_is_a_cache_key(tiny_vggish_weights: Path, pp_encoder, raw_encoder) -> None:
    ident = pp_encoder.identity()
    assert ident["encoder"] == "vggish" and ident["postprocess"] is True
    assert len(ident["weights_sha256"]) == len(ident["pca_sha256"]) == 16
    assert raw_encoder.identity()["pca_sha256"] is None
    assert raw_encoder.identity()["weights_sha256"] == ident["weights_sha256"]
    assert pp_encoder.dim == 128


def test_find_weights_in_dir_and_hub_cache(tiny_vggish_weights: Path, tmp_path, monkeypatch) -> None:
    assert find_vggish_weights(str(tiny_vggish_weights)) == (
        tiny_vggish_weights / VGGISH_WEIGHTS,
        tiny_vggish_weights / VGGISH_PCA,
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in (VGGISH_WEIGHTS, VGGISH_PCA):
        (checkpoints / name).symlink_to(tiny_vggish_weights / name)
    assert find_vggish_weights(None) == (checkpoints / VGGISH_WEIGHTS, checkpoints / VGGISH_PCA)


def test_missing_weights_name_the_file_and_the_offline_alternative(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(MissingWeightsError) as err:
        VGGishEncoder(weights_dir=str(tmp_path))
    message = str(err.value)
    assert VGGISH_WEIGHTS in message and VGGISH_PCA in message and str(tmp_path) in message
    assert "egemaps" in message and "releases/download/v0.1" in message

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeightsError, match="hub/checkpoints"):
        find_vggish_weights(None)


def test_pca_file_not_needed_without_postprocess(tiny_vggish_weights: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_vggish_weights / VGGISH_WEIGHTS, tmp_path / VGGISH_WEIGHTS)
    VGGishEncoder(weights_dir=str(tmp_path), postprocess=False)
    with pytest.raises(MissingWeightsError, match=VGGISH_PCA) as err:
        VGGishEncoder(weights_dir=str(tmp_path), postprocess=True)
    assert VGGISH_WEIGHTS not in str(err.value).split("\n")[0]


def test_corrupt_or_wrong_files_raise_a_clear_error(tiny_vggish_weights: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_vggish_weights / VGGISH_PCA, tmp_path / VGGISH_PCA)
    weights = tmp_path / VGGISH_WEIGHTS
    weights.write_bytes(b"<html>rate limited</html>")  # what a failed download often leaves
    with pytest.raises(InvalidWeightsError, match=VGGISH_WEIGHTS):
        VGGishEncoder(weights_dir=str(tmp_path))

    torch.save({"features.0.weight": torch.zeros(1)}, weights)  # readable, but not VGGish
    with pytest.raises(InvalidWeightsError, match="not a VGGish state dict"):
        VGGishEncoder(weights_dir=str(tmp_path))

    shutil.copy(tiny_vggish_weights / VGGISH_WEIGHTS, weights)
    torch.save({"pca_means": torch.zeros(128)}, tmp_path / VGGISH_PCA)
    with pytest.raises(InvalidWeightsError, match="pca_eigen_vectors"):
        VGGishEncoder(weights_dir=str(tmp_path))


def test_pca_file_with_numpy_arrays_loads(tiny_vggish_weights: Path, tmp_path: Path) -> None:
    # The release PCA file pickles numpy float64 arrays (numpy 1.x, legacy torch format): rebuild one.
    shutil.copy(tiny_vggish_weights / VGGISH_WEIGHTS, tmp_path / VGGISH_WEIGHTS)
    rng = np.random.default_rng(0)
    pca = {"pca_eigen_vectors": rng.standard_normal((128, 128)), "pca_means": rng.standard_normal(128)}
    legacy = tmp_path / "legacy.pth"
    torch.save(pca, legacy, _use_new_zipfile_serialization=False)
    # numpy 1.x names the rebuild function numpy.core.multiarray, numpy 2 numpy._core.multiarray.
    data = legacy.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / VGGISH_PCA).write_bytes(data)
    encoder = VGGishEncoder(weights_dir=str(tmp_path), postprocess=True)
    matrix, means = encoder._pca
    assert matrix.dtype == torch.float32 and means.shape == (128, 1)
    np.testing.assert_allclose(matrix.numpy(), pca["pca_eigen_vectors"].astype(np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_front_end_and_fp16_encode(tiny_vggish_weights: Path, raw_encoder: VGGishEncoder) -> None:
    x = _noise(48000, 6)
    np.testing.assert_allclose(
        log_mel_examples(torch.from_numpy(x).cuda()).cpu().numpy(),
        waveform_to_examples(x, SR).detach().numpy(),
        atol=1e-4,
    )
    cuda = VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=False, device="cuda")
    # fp16 autocast on CUDA: close to the fp32 CPU result, not equal.
    np.testing.assert_allclose(cuda.encode([x])[0], raw_encoder.encode([x])[0], rtol=2e-2, atol=1e-4)


def test_bf16_autocast_stays_within_stated_tolerance(tiny_vggish_weights: Path, raw_encoder: VGGishEncoder) -> None:
    # precision: bf16 (what auto picks on CPUs with AVX-512 BF16 or AMX): per-example cosine >= 0.999 and relative
    # error <= 2 % against fp32, before post-processing (the README states this tolerance).
    bf16 = VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=False, batch_size=4, precision="bf16")
    assert bf16.identity()["precision"] == "bf16" and raw_encoder.identity()["precision"] == "fp32"
    waves = [_noise(48000, 7), _sine(31200, 220.0)]
    a, b = np.concatenate(raw_encoder.encode(waves)), np.concatenate(bf16.encode(waves))
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.999
    assert np.linalg.norm(a - b) / np.linalg.norm(a) <= 0.02


def test_weights_stored_in_bf16_give_what_autocast_gives_on_fp32_weights(tiny_vggish_weights: Path) -> None:
    stored = VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=True, batch_size=4, precision="bf16")
    per_batch = VGGishEncoder(weights_dir=str(tiny_vggish_weights), postprocess=True, batch_size=4, precision="fp32")
    per_batch._autocast = torch.bfloat16  # autocast as before, the model's weights left in fp32
    assert {p.dtype for p in stored._model.parameters()} == {torch.bfloat16}
    waves = [_noise(48000, 3), _sine(20000, 330.0)]
    for a, b in zip(stored.encode(waves), per_batch.encode(waves)):
        np.testing.assert_array_equal(a, b)


def test_batching_splits_into_full_batches(raw_encoder: VGGishEncoder) -> None:
    from mmser.encoders.vggish import _chunk_sizes

    assert _chunk_sizes(70, 64) == [70] and _chunk_sizes(100, 64) == [64, 36] and _chunk_sizes(5, 64) == [5]
    assert _chunk_sizes(128, 64) == [64, 64] and _chunk_sizes(0, 64) == []
    assert raw_encoder.utterances_per_batch == 16
