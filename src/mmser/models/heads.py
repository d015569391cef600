"""Heads beyond the paper's: a linear head (logistic regression), gated fusion (GMU), late fusion of logits."""

from __future__ import annotations

import torch
from torch import nn

from mmser.models.server import Dropout, ServerHead


class LinearHead(nn.Module):
    """Multinomial logistic regression on the (standardised) inputs; fusion concatenates text then audio.

    The small-corpus reference: with weight decay it is an L2-regularised logistic regression trained by Adam.
    `text_proj_dim`, `hidden_dim` and `dropout` are accepted for a uniform signature and unused.
    """

    def __init__(self, *, text_dim: int | None, audio_dim: int | None, n_classes: int, text_proj_dim: int = 128,
                 hidden_dim: int = 64, dropout: float = 0.5):
        super().__init__()
        if not text_dim and not audio_dim:
            raise ValueError("LinearHead needs a text or an audio input")
        self.uses_text, self.uses_audio = bool(text_dim), bool(audio_dim)
        self.out = nn.Linear((text_dim or 0) + (audio_dim or 0), n_classes)

    def forward(self, text: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        parts = [x for x, used in ((text, self.uses_text), (audio, self.uses_audio)) if used]
        return self.out(torch.cat(parts, dim=-1))


class GatedHead(nn.Module):
    """Gated multimodal unit (Arevalo et al., 2017): a learned per-dimension gate mixes the two projections."""

    def __init__(self, *, text_dim: int | None, audio_dim: int | None, n_classes: int, text_proj_dim: int = 128,
                 hidden_dim: int = 64, dropout: float = 0.5):
        super().__init__()
        if not text_dim and not audio_dim:
            raise ValueError("GatedHead needs a text or an audio input")
        self.text_proj = nn.Linear(text_dim, text_proj_dim) if text_dim else None
        self.audio_proj = nn.Linear(audio_dim, text_proj_dim) if audio_dim else None
        self.gate = nn.Linear(text_dim + audio_dim, text_proj_dim) if text_dim and audio_dim else None
        self.classifier = nn.Sequential(Dropout(dropout), nn.Linear(text_proj_dim, hidden_dim), nn.ReLU(),
                                        nn.Linear(hidden_dim, n_classes))

    def forward(self, text: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        if self.gate is None:  # one modality: its projection alone
            fused = torch.tanh(self.text_proj(text) if self.text_proj is not None else self.audio_proj(audio))
        else:
            z = torch.sigmoid(self.gate(torch.cat([text, audio], dim=-1)))
            fused = z * torch.tanh(self.text_proj(text)) + (1 - z) * torch.tanh(self.audio_proj(audio))
        return self.classifier(fused)


class LateFusionHead(nn.Module):
    """One classifier per modality; their logits are mixed with learned, softmax-normalised weights."""

    def __init__(self, *, text_dim: int | None, audio_dim: int | None, n_classes: int, text_proj_dim: int = 128,
                 hidden_dim: int = 64, dropout: float = 0.5):
        super().__init__()
        if not text_dim and not audio_dim:
            raise ValueError("LateFusionHead needs a text or an audio input")

        def branch(dim: int) -> nn.Module:
            return nn.Sequential(Dropout(dropout), nn.Linear(dim, hidden_dim), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(hidden_dim, n_classes))

        self.text = branch(text_dim) if text_dim else None
        self.audio = branch(audio_dim) if audio_dim else None
        self.mix = nn.Parameter(torch.zeros(2))

    def forward(self, text: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        if self.text is None:
            return self.audio(audio)
        if self.audio is None:
            return self.text(text)
        w = torch.softmax(self.mix, dim=0)
        return w[0] * self.text(text) + w[1] * self.audio(audio)


class AttentionPool(nn.Module):
    """Learned attention over an utterance's frames (e.g. VGGish's 0.96 s vectors); padding gets no weight."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frames, (B,) lengths -> (B, D) attention-weighted sums."""
        valid = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None]
        scores = self.score(frames).squeeze(-1).masked_fill(~valid, float("-inf"))
        return (torch.softmax(scores, dim=1).unsqueeze(-1) * frames).sum(dim=1)


HEADS = {"linear": LinearHead, "server": ServerHead, "gated": GatedHead, "late": LateFusionHead}


def build_head(name: str, **kwargs) -> nn.Module:
    """The head called `name` (server: the paper's, exactly; linear: logistic regression)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; allowed: {', '.join(HEADS)}")
    return HEADS[name](**kwargs)
