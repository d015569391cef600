"""Frozen speech self-supervised encoders (wav2vec 2.0, HuBERT, WavLM) through transformers, local files only.

Per utterance, the hidden states of the chosen layer are averaged over time (dim D): `last` is the
model's output (`last_hidden_state`; in pre-LN models, `do_stable_layer_norm` such as wav2vec 2.0
large-lv60, it has the final layer norm that `hidden_states[-1]` lacks), an index i is
`hidden_states[i]` (0 = the transformer's input), and `all` keeps every `hidden_states` entry's mean,
flattened to (n_hidden * D), so that training can learn a weighted sum of layers as in SUPERB
(not implemented in training yet; `n_hidden` in the identity unflattens it). Per-frame states are
not stored: they are ~50 vectors per second, and the cache and the embedding file stay small.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from mmser.encoders.device import as_device_tensor, autocast, autocast_dtype, precision_name, resolve_device
from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError
from mmser.encoders.hf import load_local
from mmser.params import ParamsError

log = logging.getLogger(__name__)

MIN_SAMPLES = 400  # the convolutional front end needs one 25 ms receptive field; shorter clips are zero-padded
# Weights that inference never uses: their absence from a checkpoint is harmless.
_UNUSED = ("masked_spec_embed",)


def _missing(model: str, err: Exception) -> MissingWeightsError:
    """The error for a speech model that is not on disk."""
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return MissingWeightsError(
        f"speech encoder '{model}' is not on disk ({type(err).__name__}). Put it in the Hugging Face cache "
        f"({cache}/hub, e.g. `huggingface-cli download {model}` on a machine with internet, then copy the cache) "
        "or set extract_audio.ssl_model to a local directory holding the model and its feature extractor "
        "(save_pretrained). Offline alternatives: extract_audio.encoder: egemaps (no weights needed), "
        "or vggish with local weights."
    )


class SSLEncoder:
    """16 kHz mono waveforms -> the time-averaged hidden states of one layer (1, D), or of all layers (1, L*D)."""

    name = "ssl"

    def __init__(self, *, model: str, layer: str | int = "last", device: str = "auto", batch_size: int = 8,
                 precision: str = "fp32", sample_rate: int = 16000):
        from transformers import AutoFeatureExtractor

        self.feature_extractor, self.model, info, self._weights_sha256 = load_local(
            model, AutoFeatureExtractor, lambda err: _missing(model, err))
        missing = [k for k in info["missing_keys"] if not k.endswith(_UNUSED)]
        if missing:  # transformers would initialise them randomly: refuse rather than embed with noise
            raise InvalidWeightsError(f"speech encoder '{model}' lacks weights {sorted(missing)[:5]}; they would be "
                                      "random. Use a complete checkpoint")
        if not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise InvalidWeightsError(f"'{model}' is a {type(self.model).__name__}, not a speech SSL model "
                                      "(wav2vec 2.0, HuBERT, WavLM)")
        fe_rate = getattr(self.feature_extractor, "sampling_rate", sample_rate)
        if fe_rate != sample_rate:
            raise InvalidWeightsError(f"speech encoder '{model}' expects {fe_rate} Hz audio, the pipeline gives {sample_rate}")
        self.n_hidden = int(self.model.config.num_hidden_layers) + 1  # the transformer's input, then each layer
        if isinstance(layer, int) and not 0 <= layer < self.n_hidden:
            raise ParamsError(f"extract_audio.ssl_layer = {layer} is out of range for '{model}': "
                             f"0 (transformer input) .. {self.n_hidden - 1} (last), or last, or all")
        self.device = resolve_device(device)
        self.model.eval().requires_grad_(False).to(self.device)
        self.model_name, self.layer, self.batch_size, self.sample_rate = model, layer, batch_size, sample_rate
        # auto stays fp32 on CPU: bf16's distance to fp32 is not measured for these models (fp16 on CUDA).
        self._autocast = autocast_dtype(precision, self.device, bf16_on_cpu=False)
        self.layer_dim = int(self.model.config.hidden_size)
        self.dim = self.layer_dim * (self.n_hidden if layer == "all" else 1)
        # Models with group-normalised convolutions (wav2vec 2.0 base, HuBERT base) take no attention mask:
        # padding would leak into their statistics, so each utterance goes alone (exact, not batch-dependent).
        self.batched = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        log.info("speech encoder %s: %d layers x %d, layer=%s, %s, device=%s", model, self.n_hidden, self.layer_dim,
                 layer, "batched with attention mask" if self.batched else "one utterance per pass", self.device)

    def identity(self) -> dict:
        """What determines the embeddings (for metadata and cache keys); n_hidden says how to unflatten `all`."""
        return {"encoder": self.name, "model": self.model_name, "weights_sha256": self._weights_sha256[:16],
                "layer": self.layer, "n_hidden": self.n_hidden, "layer_dim": self.layer_dim,
                "pooling": "mean_over_time", "precision": precision_name(self._autocast), "dim": self.dim}

    def _forward(self, waves: list[torch.Tensor]) -> torch.Tensor:
        """(len(waves), dim) for waveforms of one padded batch."""
        lengths = [max(int(w.numel()), MIN_SAMPLES) for w in waves]
        inputs = self.feature_extractor([w.cpu().numpy() for w in waves], sampling_rate=self.sample_rate,
                                        padding="longest", return_attention_mask=True, return_tensors="pt")
        values = inputs["input_values"]
        if values.shape[1] < MIN_SAMPLES:
            values = torch.nn.functional.pad(values, (0, MIN_SAMPLES - values.shape[1]))
        kwargs = {}
        if self.batched:
            mask = torch.zeros(values.shape, dtype=torch.long)
            for i, n in enumerate(lengths):
                mask[i, :n] = 1
            kwargs["attention_mask"] = mask.to(self.device)
        want_all = self.layer != "last"
        with autocast(self.device, self._autocast):
            out = self.model(as_device_tensor(values, self.device), output_hidden_states=want_all, **kwargs)
        states = torch.stack(out.hidden_states, 1) if want_all else out.last_hidden_state.unsqueeze(1)  # (B, L, T, D)
        if isinstance(self.layer, int):
            states = states[:, self.layer:self.layer + 1]
        frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).to(self.device)
        valid = (torch.arange(states.shape[2], device=self.device)[None, :] < frames[:, None]).float()  # (B, T)
        mean = (states.float() * valid[:, None, :, None]).sum(2) / frames[:, None, None].float()  # (B, L, D)
        return mean.flatten(1)

    def encode(self, waveforms: list[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """A (1, dim) float32 array per waveform; batches of similar lengths (callers sort by length)."""
        waves = [w if isinstance(w, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(w, np.float32))
                 for w in waveforms]
        step = self.batch_size if self.batched else 1
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(waves), step):
                pooled = self._forward(waves[start:start + step]).cpu().numpy().astype(np.float32)
                out.extend(pooled[i:i + 1] for i in range(pooled.shape[0]))
        return out
