"""The trained model: a head over standardised embeddings and its loss. A checkpoint carries its hyperparameters
and `load_from_checkpoint` rebuilds it; training.py runs the loop (and steps the optimiser: Adam + StepLR)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmser.models.heads import AttentionPool, build_head
from mmser.models.server import Standardizer


class EmotionClassifier(nn.Module):
    """Cross-entropy on a head over (text, audio) embeddings, trained with Adam + StepLR as the paper (+ L2
    `weight_decay`, `lr`, `step_size` and `gamma`: kept with the hyperparameters, applied by training.py).

    `class_weights` (one per class, or None) weights the loss, e.g. inverse training-part frequencies. A plain
    nn.Module: predicting needs no Lightning (importing it costs seconds); checkpoints keep Lightning's layout.
    """

    def __init__(self, *, text_dim: int | None, audio_dim: int | None, classes: list[str], text_proj_dim: int,
                 hidden_dim: int, dropout: float, lr: float, step_size: int, gamma: float, head: str = "server",
                 class_weights: list[float] | None = None, audio_pooling: str = "sum", weight_decay: float = 0.0):
        super().__init__()
        self.hparams = dict(text_dim=text_dim, audio_dim=audio_dim, classes=list(classes), text_proj_dim=text_proj_dim,
                            hidden_dim=hidden_dim, dropout=dropout, lr=lr, step_size=step_size, gamma=gamma, head=head,
                            class_weights=class_weights, audio_pooling=audio_pooling, weight_decay=weight_decay)
        self.head = build_head(head, text_dim=text_dim, audio_dim=audio_dim, n_classes=len(classes),
                               text_proj_dim=text_proj_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.text_norm = Standardizer(text_dim) if text_dim else None
        self.audio_norm = Standardizer(audio_dim) if audio_dim else None
        # Pooling of audio frames learned with the head; other poolings happen before training (features).
        self.audio_pool = AttentionPool(audio_dim) if audio_dim and audio_pooling == "attention" else None
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.loss = nn.CrossEntropyLoss(weight=weight)

    def forward(self, text: torch.Tensor | None, audio: torch.Tensor | None,
                audio_lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.text_norm is not None:
            text = self.text_norm(text)
        if self.audio_norm is not None:
            audio = self.audio_norm(audio)
        if self.audio_pool is not None:
            audio = self.audio_pool(audio, audio_lengths)
        return self.head(text=text, audio=audio)

    @torch.inference_mode()
    def predict_proba(self, text: torch.Tensor | None, audio: torch.Tensor | None,
                      audio_lengths: torch.Tensor | None = None) -> np.ndarray:
        """Class probabilities for a batch (eval mode)."""
        self.eval()
        return torch.softmax(self(text, audio, audio_lengths), dim=-1).cpu().numpy()

    def save(self, path) -> None:
        """A checkpoint `load_from_checkpoint` reads: weights and hyperparameters (Lightning's keys)."""
        torch.save({"state_dict": self.state_dict(), "hyper_parameters": dict(self.hparams)}, path)

    @classmethod
    def load_from_checkpoint(cls, path, map_location="cpu") -> "EmotionClassifier":
        """The model a checkpoint holds (ours, or one Lightning wrote for this class: the same keys)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
        return model
