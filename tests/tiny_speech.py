"""Tiny random speech SSL models (wav2vec 2.0, HuBERT, WavLM) saved like real checkpoints, and WAV corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 16000


def make_tiny_ssl(directory: Path, kind: str = "wav2vec2", *, masked: bool = False, seed: int = 0) -> Path:
    """Save a 2-layer random `kind` model and a Wav2Vec2FeatureExtractor to `directory` (save_pretrained).

    masked=True builds the layer-norm variant that takes an attention mask (batched extraction);
    the default group-norm variant, like wav2vec 2.0 base, is run one utterance at a time.
    """
    import torch
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)

    config_cls, model_cls = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "hubert": (HubertConfig, HubertModel),
                             "wavlm": (WavLMConfig, WavLMModel)}[kind]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config_cls(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        conv_dim=(8, 8, 8), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                        feat_extract_norm="layer" if masked else "group", do_stable_layer_norm=masked)
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=masked).save_pretrained(directory)
    return directory


def tone(n: int, seed: int) -> np.ndarray:
    """A noisy harmonic tone of n samples (distinct per seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 100 + 15 * seed % 200
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * 0.2 + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


def write_wavs(directory: Path, lengths: list[int], first_seed: int = 0) -> list[str]:
    """One 16 kHz 16-bit WAV per length; returns their paths."""
    import soundfile as sf

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, n in enumerate(lengths):
        path = directory / f"utt{first_seed + i:03d}.wav"
        sf.write(path, tone(n, first_seed + i), SR, subtype="PCM_16")
        paths.append(str(path))
    return paths
