"""The trained model: a head over standardised embeddings with its loss and optimiser (a LightningModule, so a
checkpoint carries its hyperparameters and `load_from_checkpoint` rebuilds it); training.py runs the loop."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from mmser.metrics import confusion, unweighted_accuracy, weighted_accuracy
from mmser.models.heads import AttentionPool, build_head
from mmser.models.server import Standardizer


class EmotionClassifier(pl.LightningModule):
    """Cross-entropy on a head over (text, audio) embeddings; Adam + StepLR as the paper (+ L2 `weight_decay`).

    `class_weights` (one per class, or None) weights the loss, e.g. inverse training-part frequencies.
    """

    def __init__(self, *, text_dim: int | None, audio_dim: int | None, classes: list[str], text_proj_dim: int,
                 hidden_dim: int, dropout: float, lr: float, step_size: int, gamma: float, head: str = "server",
                 class_weights: list[float] | None = None, audio_pooling: str = "sum", weight_decay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
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

    def loss_of(self, logits: torch.Tensor, y: torch.Tensor, weight_total: torch.Tensor | None = None,
                world: int = 1) -> torch.Tensor:
        """The loss of this process's share of the global batch, such that DDP's mean over the `world` processes'
        gradients is the gradient of one process's loss on the whole batch.

        Unweighted, each share's mean does that (the shares are equal). Class-weighted cross-entropy divides
        by the weights of the batch's labels: by the whole batch's sum (`weight_total`, gathered by the caller).
        """
        if self.loss.weight is None or world == 1:
            return self.loss(logits, y)
        return nn.functional.cross_entropy(logits, y, weight=self.loss.weight, reduction="sum") * world / weight_total

    def label_weights(self, y: torch.Tensor) -> torch.Tensor | None:
        """Sum of the class weights of `y` (None without class weights): what `loss_of` divides by under DDP."""
        return None if self.loss.weight is None else self.loss.weight[y].sum()

    @torch.no_grad()
    def validate(self, text: torch.Tensor | None, audio: torch.Tensor | None, lengths: torch.Tensor,
                 y: torch.Tensor) -> dict[str, float]:
        """Validation loss, UA, WA and the selection score (UA; ties go to the lower loss) in eval mode."""
        self.eval()
        logits = self(text, audio, lengths)
        loss = float(self.loss(logits, y))
        matrix = confusion(y.cpu().numpy(), logits.argmax(-1).cpu().numpy(), len(self.hparams.classes))
        ua = unweighted_accuracy(matrix)
        # On a small validation set UA ties often; the tie goes to the lower validation loss (the term is <= 1e-3:
        # below one UA step unless K classes x n per class > 1000).
        return {"val_loss": loss, "val_ua": ua, "val_wa": weighted_accuracy(matrix),
                "val_select": ua - 1e-4 * min(loss, 10.0)}

    @torch.inference_mode()
    def predict_proba(self, text: torch.Tensor | None, audio: torch.Tensor | None,
                      audio_lengths: torch.Tensor | None = None) -> np.ndarray:
        """Class probabilities for a batch (eval mode)."""
        self.eval()
        return torch.softmax(self(text, audio, audio_lengths), dim=-1).cpu().numpy()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.hparams.step_size,
                                                    gamma=self.hparams.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
