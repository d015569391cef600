"""Fit one head on cached embeddings with Lightning Fabric: tensors in memory, whole-batch gathers, the best
epoch kept on validation.

Fabric runs the same loop in one process or under DDP (gloo on CPUs, NCCL on GPUs, across nodes): with W
processes each takes batch_size / W rows of the same seeded shuffled order, so the W shares of step t are the
rows one process takes at step t and DDP's averaged gradient is the single process's gradient. Every process
scores the whole validation part, so the epoch choice is the same everywhere. `fit_head` returns what it
learned; choosing among candidates (selection.py), writing outputs and MLflow (the train stage) live elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from mmser.errors import UserError
from mmser.features import Features
from mmser.models.module import EmotionClassifier
from mmser.params import DistributedParams

SINGLE = DistributedParams(accelerator="cpu", devices=1, num_nodes=1, strategy="single")


def make_fabric(distributed: DistributedParams | None = None):
    """A Lightning Fabric for this launch (`single`: one process on `accelerator`; `ddp`, `ddp_spawn`: DDP)."""
    from lightning.fabric import Fabric

    p = distributed or SINGLE
    if p.strategy == "single":
        return Fabric(accelerator=p.accelerator, devices=1, num_nodes=1)
    from lightning.fabric.strategies import DDPStrategy

    backend = "gloo" if p.accelerator == "cpu" else None
    strategy = DDPStrategy(process_group_backend=backend,
                           start_method="spawn" if p.strategy == "ddp_spawn" else "popen")
    return Fabric(accelerator=p.accelerator, devices=p.devices, num_nodes=p.num_nodes, strategy=strategy)


def launched(fabric, function: Callable[..., Any], *args, **kwargs) -> Any:
    """Run `function(fabric, ...)` in every process of the launch and return global rank 0's result in the
    process that writes the outputs (None in the others).

    Rank 0's result goes through a file: under ddp_spawn the parent joins its processes before it reads
    anything they send, so a result larger than a pipe's buffer sent back directly would never arrive.
    """
    with tempfile.TemporaryDirectory(prefix="mmser-train-") as scratch:
        path = Path(scratch) / "result.pt"
        fabric.launch(_saved, function, path, *args, **kwargs)
        return torch.load(path, weights_only=False) if path.exists() else None


def _saved(fabric, function: Callable[..., Any], path: Path, *args, **kwargs) -> None:
    # In every process (spawned ones start with torch's default): heads are tiny, and more threads only add
    # synchronisation (12x slower on a busy 2-core CPU).
    torch.set_num_threads(1)
    result = function(fabric, *args, **kwargs)
    if fabric.global_rank == 0:
        torch.save(result, path)


@dataclasses.dataclass
class Fit:
    """What one fit learned: the model (at its best validation epoch, or the last without validation)."""

    model: EmotionClassifier
    history: list[dict]
    best_epoch: int
    best_val_ua: float | None


def inverse_frequency_weights(labels: np.ndarray, n_classes: int) -> list[float]:
    """Per-class loss weights n / (K * count) from the training part (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return [float(len(labels) / (n_classes * c)) if c else 0.0 for c in counts]


def head_options(p) -> dict:
    """fit_head's keyword arguments from the `train` params section (all but head, weight decay and data)."""
    return dict(head_kwargs=dict(text_proj_dim=p.text_proj_dim, hidden_dim=p.hidden_dim, dropout=p.dropout,
                                 lr=p.lr, step_size=p.step_size, gamma=p.gamma),
                epochs=p.epochs, batch_size=p.batch_size, standardize=p.standardize, class_weights=p.class_weights,
                early_stopping=p.early_stopping, audio_pooling=p.audio_pooling)


def _tensors(features: Features, ids: list[str], modality: str, device) -> tuple[torch.Tensor | None, ...]:
    text, audio, lengths = features.batch(features.rows(ids), modality)
    y = torch.from_numpy(features.y[features.rows(ids)])
    return tuple(t.to(device) if t is not None else None for t in (text, audio, lengths, y))


def _take(tensors: tuple, index: torch.Tensor) -> tuple:
    return tuple(t[index] if t is not None else None for t in tensors)


def process_share(batch_size: int, world: int) -> int:
    """Rows each of `world` processes takes of the global batch; UserError unless it splits evenly."""
    if batch_size % world:
        raise UserError(f"train.batch_size {batch_size} must be a multiple of the {world} processes "
                        "(distributed.devices x num_nodes): it is the global batch, split evenly")
    return batch_size // world


def fit_head(fabric, features: Features, *, train_ids: list[str], val_ids: list[str], modality: str,
             classes: list[str], seed: int, head: str, weight_decay: float, head_kwargs: dict, epochs: int,
             batch_size: int, standardize: bool, class_weights: bool, early_stopping: int,
             audio_pooling: str = "sum") -> Fit:
    """Fit `head` on `train_ids`; keep the epoch with the best validation UA on `val_ids` (ties: lower loss).

    With no `val_ids` (a refit on all labelled data) it trains exactly `epochs` epochs and keeps the last.
    `early_stopping` > 0 stops after that many epochs without a better validation score. Every process of
    `fabric`'s launch returns the same Fit.
    """
    world = fabric.world_size
    share = process_share(batch_size, world)
    fabric.seed_everything(seed, verbose=False)
    text_dim = features.text.shape[1] if modality in ("text", "fusion") else None
    audio_dim = features.audio.shape[-1] if modality in ("audio", "fusion") else None
    train = _tensors(features, train_ids, modality, "cpu")
    weights = inverse_frequency_weights(train[3].numpy(), len(classes)) if class_weights else None
    model = EmotionClassifier(text_dim=text_dim, audio_dim=audio_dim, classes=classes, head=head,
                              class_weights=weights, audio_pooling=audio_pooling, weight_decay=weight_decay,
                              **head_kwargs)
    if standardize:  # statistics from the training part only (audio: over its real frames, not the padding)
        text, audio, lengths, _ = train
        if model.text_norm is not None:
            model.text_norm.fit(text)
        if model.audio_norm is not None:
            model.audio_norm.fit(audio if audio.dim() == 2 else torch.cat([a[:n] for a, n in zip(audio, lengths)]))
    optimizers = model.configure_optimizers()
    wrapped, optimizer = fabric.setup(model, optimizers["optimizer"])
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    train = tuple(fabric.to_device(t) if t is not None else None for t in train)
    val = _tensors(features, val_ids, modality, fabric.device) if val_ids else None
    sampler = DistributedSampler(range(len(train_ids)), num_replicas=world, rank=fabric.global_rank, shuffle=True,
                                 seed=seed)
    history: list[dict] = []
    best_state, best_score, since_best = None, float("-inf"), 0
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch - 1)
        order = torch.tensor(list(sampler))
        wrapped.train()
        loss_sum, steps = torch.zeros((), device=fabric.device), 0
        for start in range(0, len(order), share):
            text, audio, lengths, y = _take(train, order[start:start + share])
            logits = wrapped(text, audio, lengths)
            total = model.label_weights(y)
            if total is not None and world > 1:
                total = fabric.all_reduce(total, reduce_op="sum")
            loss = model.loss_of(logits, y, total, world)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
        scheduler.step()
        if world > 1:  # the global batch's loss is the mean of the processes' share losses
            loss_sum = fabric.all_reduce(loss_sum, reduce_op="sum") / world
        entry = {"epoch": epoch, "train_loss": float(loss_sum) / steps}
        if val is not None:
            entry.update(model.validate(*val))
            if entry["val_select"] > best_score:
                best_state, best_score, since_best = copy.deepcopy(model.state_dict()), entry["val_select"], 0
            else:
                since_best += 1
        history.append(entry)
        if early_stopping and val is not None and since_best >= early_stopping:
            break
    # A fresh module with the kept weights: the trained one holds Fabric's optimiser (it does not pickle, and
    # ddp_spawn returns the result across processes).
    kept = EmotionClassifier(**model.hparams)
    if val is None:
        kept.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        return Fit(model=kept.eval(), history=history, best_epoch=len(history), best_val_ua=None)
    kept.load_state_dict({k: v.cpu() for k, v in best_state.items()})
    best = max(history, key=lambda h: (h["val_select"], -h["epoch"]))  # first epoch with the best score
    return Fit(model=kept.eval(), history=history, best_epoch=int(best["epoch"]), best_val_ua=float(best["val_ua"]))


def save_model(model: EmotionClassifier, path: Path) -> None:
    """Write a checkpoint `EmotionClassifier.load_from_checkpoint` reads (weights, hyperparameters, version)."""
    import lightning

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
