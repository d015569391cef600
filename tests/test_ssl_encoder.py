"""Speech SSL encoders (wav2vec 2.0, HuBERT, WavLM) on tiny random models loaded through the real loading code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_speech import make_tiny_ssl, tone, write_wavs

from mmser.cache import EmbeddingCache
from mmser.encoders.errors import MissingWeightsError
from mmser.encoders.ssl import SSLEncoder
from mmser.extract import build_audio_encoder, extract_audio

LENGTHS = [16000, 8000, 300, 24000, 12000]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl")
    return {f"{kind}{'-masked' if masked else ''}": make_tiny_ssl(root / f"{kind}-{masked}", kind, masked=masked)
            for kind in ("wav2vec2", "hubert", "wavlm") for masked in (False, True)}


def _reference(path: Path, wave: np.ndarray):
    """The model's output for one utterance, straight from transformers."""
    from transformers import AutoFeatureExtractor, AutoModel

    fe = AutoFeatureExtractor.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        values = fe(wave, sampling_rate=16000, return_tensors="pt")["input_values"]
        return model(values, output_hidden_states=True)


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "wavlm", "wavlm-masked"])
def test_layers_match_the_models_hidden_states(models: dict[str, Path], name: str) -> None:
    wave = tone(24000, 1)
    out = _reference(models[name], wave)
    means = [h[0].mean(0).numpy() for h in out.hidden_states]
    assert len(means) == 3  # transformer input + 2 layers
    # last = the model's output; for pre-LN models (wavlm-masked) it is hidden_states[-1] after the final norm.
    last = SSLEncoder(model=str(models[name]), layer="last", device="cpu").encode([wave])[0]
    np.testing.assert_allclose(last[0], out.last_hidden_state[0].mean(0).numpy(), atol=1e-5)
    first = SSLEncoder(model=str(models[name]), layer=1, device="cpu").encode([wave])[0]
    np.testing.assert_allclose(first[0], means[1], atol=1e-5)
    encoder = SSLEncoder(model=str(models[name]), layer="all", device="cpu")
    every = encoder.encode([wave])[0]
    assert every.shape == (1, 3 * 16) and encoder.dim == 48
    np.testing.assert_allclose(every.reshape(3, 16), np.stack(means), atol=1e-5)
    ident = encoder.identity()
    assert (ident["layer"], ident["n_hidden"], ident["layer_dim"], ident["dim"]) == ("all", 3, 16, 48)
    assert len(ident["weights_sha256"]) == 16 and ident["precision"] == "fp32"


@pytest.mark.parametrize("name", ["wav2vec2", "hubert-masked", "wavlm-masked"])
def test_batched_equals_one_by_one(models: dict[str, Path], name: str) -> None:
    encoder = SSLEncoder(model=str(models[name]), layer="all", device="cpu", batch_size=3)
    assert encoder.batched == name.endswith("masked")  # group-norm models go one utterance at a time
    waves = [tone(n, i) for i, n in enumerate(LENGTHS)]
    together = encoder.encode(waves)
    assert [t.shape for t in together] == [(1, 48)] * len(waves)
    for i, w in enumerate(waves):
        np.testing.assert_allclose(together[i], encoder.encode([w])[0], atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_extraction_through_the_cache(models: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MMSER_CACHE_DIR", str(tmp_path / "cache"))
    wavs = write_wavs(tmp_path / "wavs", LENGTHS)
    encoder = build_audio_encoder(encoder="ssl", sample_rate=16000, ssl_model=str(models["wavlm-masked"]),
                                  ssl_layer="last", batch_size=2, device="auto")
    with EmbeddingCache() as cache:
        out, stats = extract_audio(wavs, encoder, cache, sample_rate=16000, workers=0)
        assert stats.misses == len(wavs) and [o.shape for o in out] == [(1, 16)] * len(wavs)
        _, stats = extract_audio(wavs, encoder, cache, sample_rate=16000, workers=0)
        assert (stats.hits, stats.misses) == (len(wavs), 0)
        other = build_audio_encoder(encoder="ssl", sample_rate=16000, ssl_model=str(models["wavlm-masked"]),
                                    ssl_layer=1, batch_size=2, device="cpu")
        _, stats = extract_audio(wavs, other, cache, sample_rate=16000, workers=0)
        assert stats.misses == len(wavs)  # another layer is another identity


def test_layer_out_of_range(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="ssl_layer = 3 is out of range"):
        SSLEncoder(model=str(models["wav2vec2"]), layer=3, device="cpu")


@pytest.mark.parametrize("name", ["facebook/no-such-wav2vec2", "/nonexistent/wavlm-dir"])
def test_missing_model_names_it_and_the_offline_alternatives(name: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        SSLEncoder(model=name, device="cpu")
    message = str(err.value)
    assert name in message and "egemaps" in message and "extract_audio.ssl_model" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_close_to_cpu_fp32(models: dict[str, Path]) -> None:
    waves = [tone(n, i) for i, n in enumerate(LENGTHS)]
    cpu = SSLEncoder(model=str(models["wavlm-masked"]), layer="all", device="cpu").encode(waves)
    gpu = SSLEncoder(model=str(models["wavlm-masked"]), layer="all", device="cuda", precision="auto")
    assert gpu.identity()["precision"] == "fp16"
    for a, b in zip(gpu.encode(waves), cpu):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)
