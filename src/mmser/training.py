"""Train one head per (modality, fold) on cached embeddings with Lightning; MLflow logs each as its own run."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

# Lightning's notices about an existing checkpoint folder (one per run by design) and a torch deprecation.
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")

from mmser.data.records import check_ids
from mmser.distributed import is_launch_rank_zero, trainer_kwargs, world_size
from mmser.models.module import EmotionClassifier
from mmser.params import DistributedParams
from mmser.tracking import stage_run, tracking_uri

SINGLE = DistributedParams(accelerator="cpu", devices=1, num_nodes=1, strategy="single")

log = logging.getLogger(__name__)


class Features:
    """Pooled text and audio vectors for every utterance, addressable by id, plus integer labels."""

    def __init__(self, ids: list[str], labels: list[str], classes: list[str], text: np.ndarray | None,
                 audio: np.ndarray | None, audio_lengths: np.ndarray | None = None):
        self.index = {utt: i for i, utt in enumerate(ids)}
        self.y = np.array([classes.index(label) for label in labels], dtype=np.int64)
        self.text, self.audio = text, audio
        # Padded (N, T, D) audio frames come with their lengths; pooled (N, D) audio counts as one frame each.
        self.audio_lengths = audio_lengths if audio_lengths is not None else np.ones(len(ids), dtype=np.int64)

    def batch(self, rows: np.ndarray, modality: str) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(text, audio, audio_lengths) tensors of `rows` for `modality`; an unused modality is None."""
        text = torch.from_numpy(self.text[rows]) if modality in ("text", "fusion") else None
        audio = torch.from_numpy(self.audio[rows]) if modality in ("audio", "fusion") else None
        return text, audio, torch.from_numpy(self.audio_lengths[rows])

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row numbers of `ids` (all must be known)."""
        check_ids(ids, self.index, wanted_from="the split", present_in="the prepared table's embeddings")
        return np.array([self.index[u] for u in ids], dtype=np.int64)


class _Rows(Dataset):
    """(text, audio, audio length, label) for the selected rows; an absent modality is an empty tensor."""

    def __init__(self, features: Features, rows: np.ndarray, modality: str):
        text, audio, self.lengths = features.batch(rows, modality)
        empty = torch.zeros(len(rows), 0)
        self.text = text if text is not None else empty
        self.audio = audio if audio is not None else empty
        self.y = torch.from_numpy(features.y[rows])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.text[i], self.audio[i], self.lengths[i], self.y[i]


class EpochLog(Callback):
    """Per epoch, on global rank 0 only: the history row (history.csv), the progress bar, MLflow's curves.

    Everything it holds pickles (the bar and the MLflow client are made in the process that trains), so the
    same callback works in one process, in `ddp` processes and in `ddp_spawn`'s spawned ones.
    """

    def __init__(self, history_path: Path, run_name: str, epochs: int, tracking: tuple[str, str] | None):
        self.history_path, self.run_name, self.epochs, self.tracking = history_path, run_name, epochs, tracking
        self.history: list[dict] = []
        self._bar = self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None, "_client": None}

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._bar = tqdm(total=self.epochs, desc=f"train {self.run_name}", unit="epoch", mininterval=1.0)
            if self.tracking is not None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(self.tracking[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        epoch = trainer.current_epoch + 1
        self.history.append({"epoch": epoch, **metrics})
        pd.DataFrame(self.history).to_csv(self.history_path, index=False)
        if self._client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._client.log_batch(self.tracking[1], metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.run_name} val_ua={metrics.get('val_ua', float('nan')):.3f}",
                                      refresh=False)
            self._bar.update(1)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()


class _FoldData(pl.LightningDataModule):
    """The fold's loaders. Training batches come from a seeded DistributedSampler in every launch: with W
    processes each takes batch_size / W rows of the same shuffled order, so the W shares of step t are the
    rows one process takes at step t, and DDP's averaged gradient is the single process's gradient.
    Every process scores the whole validation part (small), so checkpoint choice sees all of it."""

    def __init__(self, train_set: Dataset, val_set: Dataset, *, batch_size: int, seed: int):
        super().__init__()
        self.train_set, self.val_set, self.batch_size, self.seed = train_set, val_set, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size // world, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def _input_dims(features: Features, modality: str) -> tuple[int | None, int | None]:
    text_dim = features.text.shape[1] if modality in ("text", "fusion") else None
    audio_dim = features.audio.shape[-1] if modality in ("audio", "fusion") else None
    return text_dim, audio_dim


def train_options(p) -> dict:
    """train_one's keyword arguments from the `train` params section (all but head and the per-run ones)."""
    return dict(head_kwargs=dict(text_proj_dim=p.text_proj_dim, hidden_dim=p.hidden_dim, dropout=p.dropout,
                                 lr=p.lr, step_size=p.step_size, gamma=p.gamma),
                epochs=p.epochs, batch_size=p.batch_size, standardize=p.standardize, class_weights=p.class_weights,
                early_stopping=p.early_stopping, audio_pooling=p.audio_pooling)


def inverse_frequency_weights(labels: np.ndarray, n_classes: int) -> list[float]:
    """Per-class loss weights n / (K * count) from the training part (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return [float(len(labels) / (n_classes * c)) if c else 0.0 for c in counts]


def train_one(features: Features, fold: dict, *, modality: str, classes: list[str], out_dir: Path, seed: int,
              head: str, head_kwargs: dict, epochs: int, batch_size: int, standardize: bool, class_weights: bool,
              early_stopping: int, tracking: dict | None, card: dict, audio_pooling: str = "sum",
              distributed: DistributedParams | None = None) -> dict | None:
    """Fit one head on one fold; keep the best checkpoint on validation; write model, card, history and record.

    Outputs in `out_dir`: model.ckpt, model.json (the card: how inputs were embedded, so prediction embeds
    exactly as training did), history.csv (per epoch) and run.json (the record, with the MLflow run id).
    `tracking` holds experiment, params (flat), inputs (paths to hash) and parent (run id); None logs nothing.
    `distributed` chooses Lightning's launch (None: one process). Only global rank 0 writes outputs and the
    MLflow run; every other process returns None after training.
    """
    distributed = distributed or SINGLE
    if batch_size % world_size(distributed):
        raise ValueError(f"train.batch_size {batch_size} must be a multiple of the {world_size(distributed)} "
                         "processes (distributed.devices x num_nodes): it is the global batch, split evenly")
    rank_zero = is_launch_rank_zero(distributed)
    tracking = tracking if rank_zero else None
    pl.seed_everything(seed, workers=True, verbose=False)
    train_rows, val_rows = features.rows(fold["train"]), features.rows(fold["val"])
    text_dim, audio_dim = _input_dims(features, modality)
    weights = inverse_frequency_weights(features.y[train_rows], len(classes)) if class_weights else None
    model = EmotionClassifier(text_dim=text_dim, audio_dim=audio_dim, classes=classes, head=head,
                              class_weights=weights, audio_pooling=audio_pooling, **head_kwargs)
    train_set = _Rows(features, train_rows, modality)
    if standardize:  # statistics from the training part only (audio: over its real frames, not the padding)
        if model.text_norm is not None:
            model.text_norm.fit(train_set.text)
        if model.audio_norm is not None:
            frames = train_set.audio if train_set.audio.dim() == 2 else torch.cat(
                [a[:n] for a, n in zip(train_set.audio, train_set.lengths)])
            model.audio_norm.fit(frames)
    data = _FoldData(train_set, _Rows(features, val_rows, modality), batch_size=batch_size, seed=seed)

    run_name = f"{modality}/{fold['name']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=out_dir, filename="model", monitor="val_select", mode="max", save_top_k=1,
                                 enable_version_counter=False)
    callbacks: list[Callback] = [checkpoint]
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="val_select", mode="max", patience=early_stopping))
    run = (stage_run("train", experiment=tracking["experiment"], inputs=tracking["inputs"], run_name=run_name,
                     parent=tracking["parent"],
                     params={**tracking["params"], "modality": modality, "fold": fold["name"],
                             "held_out": fold["held_out"], "n_train": len(train_rows), "n_val": len(val_rows)})
           if tracking is not None else contextlib.nullcontext())
    with run as active:
        run_id = active.info.run_id if active is not None else None
        if run_id is not None:
            import mlflow

            mlflow.set_tags({"modality": modality, "fold": fold["name"], "processes": world_size(distributed)})
        history_path = out_dir / "history.csv"
        epoch_log = EpochLog(history_path, run_name, epochs, (tracking_uri(), run_id) if run_id else None)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, deterministic=True, callbacks=[*callbacks, epoch_log],
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             default_root_dir=out_dir, **trainer_kwargs(distributed))
        trainer.fit(model, datamodule=data)
        if not rank_zero:
            return None
        history = pd.read_csv(history_path).to_dict("records")  # written by rank 0, maybe in a spawned process
        best = out_dir / "model.ckpt"
        card_path = out_dir / "model.json"
        card_path.write_text(json.dumps({**card, "classes": classes, "modality": modality, "fold": fold["name"],
                                         "head": head, "checkpoint": best.name}, indent=2) + "\n")
        if run_id is not None:
            for artifact in (best, card_path, history_path):
                mlflow.log_artifact(str(artifact), artifact_path="model")
    best_epoch = _best_epoch(history)
    record = {"modality": modality, "fold": fold["name"], "held_out": fold["held_out"], "run_id": run_id,
              "parent_run_id": tracking["parent"] if tracking else None, "best_epoch": best_epoch,
              "epochs_run": len(history), "best_val_ua": next(h["val_ua"] for h in history if h["epoch"] == best_epoch),
              "processes": trainer.world_size}
    (out_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s: best val UA %.4f at epoch %d of %d -> %s", run_name, record["best_val_ua"], best_epoch,
             record["epochs_run"], best)
    return record


def _best_epoch(history: list[dict]) -> int:
    """First epoch with the highest selection score (what ModelCheckpoint keeps)."""
    best = max(history, key=lambda h: (h["val_select"], -h["epoch"]))
    return int(best["epoch"])
