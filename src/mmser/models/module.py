"""LightningModule that trains a head on cached embeddings and reports UA/WA on validation."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from mmser.metrics import confusion, unweighted_accuracy, weighted_accuracy
from mmser.models.heads import AttentionPool, build_head
from mmser.models.server import Standardizer


class EmotionClassifier(pl.LightningModule):
    """Cross-entropy on a head over (text, audio) embeddings; Adam + StepLR as the paper.

    `class_weights` (one per class, or None) weights the loss, e.g. inverse training-part frequencies.
    """

    def __init__(self, *, text_dim: int | None, audio_dim: int | None, classes: list[str], text_proj_dim: int,
                 hidden_dim: int, dropout: float, lr: float, step_size: int, gamma: float, head: str = "server",
                 class_weights: list[float] | None = None, audio_pooling: str = "sum"):
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
        self._val: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def forward(self, text: torch.Tensor | None, audio: torch.Tensor | None,
                audio_lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.text_norm is not None:
            text = self.text_norm(text)
        if self.audio_norm is not None:
            audio = self.audio_norm(audio)
        if self.audio_pool is not None:
            audio = self.audio_pool(audio, audio_lengths)
        return self.head(text=text, audio=audio)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        text, audio, lengths, y = batch
        loss = self._train_loss(self(text, audio, lengths), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def _train_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of this process's share of the global batch, such that DDP's mean over the W processes'
        gradients is the gradient of one process's loss on the whole batch.

        Unweighted, each share's mean does that (the shares are equal). Class-weighted cross-entropy divides
        by the weights of the batch's labels: by the whole batch's sum, gathered from every process.
        """
        world = self.trainer.world_size
        if self.loss.weight is None or world == 1:
            return self.loss(logits, y)
        total = self.trainer.strategy.reduce(self.loss.weight[y].sum(), reduce_op="sum")
        return nn.functional.cross_entropy(logits, y, weight=self.loss.weight, reduction="sum") * world / total

    def validation_step(self, batch, batch_idx: int) -> None:
        text, audio, lengths, y = batch
        logits = self(text, audio, lengths)
        loss = self.loss(logits, y)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        self._val.append((logits.argmax(-1).cpu(), y.cpu(), float(loss) * len(y)))

    def on_validation_epoch_end(self) -> None:
        pred = torch.cat([p for p, _, _ in self._val]).numpy()
        true = torch.cat([t for _, t, _ in self._val]).numpy()
        mean_loss = sum(l for _, _, l in self._val) / len(true)
        self._val.clear()
        matrix = confusion(true, pred, len(self.hparams.classes))
        ua = unweighted_accuracy(matrix)
        # Every process scores the whole validation part: the values agree, and sync_dist keeps Lightning's
        # epoch-level reduction (a mean of equal values) explicit under DDP.
        self.log("val_ua", ua, sync_dist=True)
        self.log("val_wa", weighted_accuracy(matrix), sync_dist=True)
        # Checkpoints are chosen on validation UA; on a small validation set UA ties often, and the tie goes to
        # the lower validation loss (the term is <= 1e-3: below one UA step unless K classes x n per class > 1000).
        self.log("val_select", ua - 1e-4 * min(mean_loss, 10.0), sync_dist=True)

    @torch.inference_mode()
    def predict_proba(self, text: torch.Tensor | None, audio: torch.Tensor | None,
                      audio_lengths: torch.Tensor | None = None) -> np.ndarray:
        """Class probabilities for a batch (eval mode)."""
        self.eval()
        return torch.softmax(self(text, audio, audio_lengths), dim=-1).cpu().numpy()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.hparams.step_size,
                                                    gamma=self.hparams.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
