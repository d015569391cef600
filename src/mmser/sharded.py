"""Extraction sharded across ranks on Lightning's engine: whole batches per rank, merged in corpus order.

Rank 0 forms the batches (what the cache lacks, length-bucketed, exactly as one process would) and
broadcasts them; rank r encodes batches r, r + world, r + 2 world, ... with `trainer.predict`, and a
`BasePredictionWriter` saves each batch's rows with their positions to a scratch folder. After a
barrier, rank 0 reads the batches back in their original order. Every batch is computed with the same
composition as in one process, so the merged embeddings equal the single-process ones bitwise.
Lightning's DistributedSampler is off: it pads ranks with duplicates and splits batches.

The scratch folder must be visible to every rank (one node, or a shared filesystem across nodes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from mmser.distributed import trainer_kwargs, world_size
from mmser.params import DistributedParams

log = logging.getLogger(__name__)
for _name in ("lightning.pytorch", "lightning.fabric"):  # importing Lightning resets them to INFO (device banners)
    logging.getLogger(_name).setLevel(logging.WARNING)

# Batches are whole and every index is returned: Lightning's warning about custom batch samplers does not apply.
warnings.filterwarnings("ignore", message=".*custom batch sampler.*for prediction", module="lightning")


@dataclasses.dataclass(frozen=True)
class Sharding:
    """How extraction runs over ranks: the launch, an encoder factory and where ranks leave their results."""

    distributed: DistributedParams
    make_encoder: Callable[..., Any]  # make_encoder(device=...) -> encoder; must pickle (ddp_spawn builds it there)
    scratch: Path  # parent of the per-run folder of batch files; visible to every rank


@dataclasses.dataclass(frozen=True)
class Job:
    """What one kind of input needs: a dataset over the inputs and the encoder call on one batch of items."""

    make_dataset: Callable[[list[str]], Dataset]  # inputs (texts or paths) -> items
    encode: Callable[[Any, list], list[np.ndarray]]  # (encoder, items) -> one array per item
    workers: int = 0  # DataLoader processes preparing items (audio decoding)


class _RankBatches:
    """Yields this rank's share of the batches, each whole: batches[rank::world]."""

    def __init__(self, batches: Sequence[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items: list) -> list:
    return items


class ShardedEncoding(pl.LightningModule):
    """Encodes this rank's batches; the encoder stays outside Lightning's module tree (it owns its device)."""

    def __init__(self, job: Job, make_encoder: Callable[..., Any], encoder: Any,
                 plan: tuple[list[str], list[list[int]], str] | None):
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True  # fewer batches than ranks: some get none
        self.job, self.make_encoder, self._encoder, self.plan = job, make_encoder, encoder, plan
        self.mine: list[int] = []  # global numbers of this rank's batches

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_encoder"] = None  # ddp_spawn: each process builds its own, on its own device
        return state

    def setup(self, stage: str) -> None:
        self.plan = self.trainer.strategy.broadcast(self.plan, src=0)  # rank 0's view of the cache decides for all
        device = self.trainer.strategy.root_device
        if self._encoder is None or torch.device(getattr(self._encoder, "device", device)) != device:
            self._encoder = self.make_encoder(device=str(device))

    def predict_dataloader(self) -> DataLoader:
        inputs, batches, _ = self.plan
        self.mine = list(range(self.trainer.global_rank, len(batches), self.trainer.world_size))
        return DataLoader(self.job.make_dataset(inputs), batch_sampler=_RankBatches([batches[b] for b in self.mine]),
                          collate_fn=_collate, num_workers=self.job.workers)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # the encoder moves its inputs itself, as in one process

    def predict_step(self, batch: list, batch_idx: int) -> list[np.ndarray]:
        return self.job.encode(self._encoder, batch)


class BatchFiles(BasePredictionWriter):
    """Saves each batch's rows and dataset positions to `<folder>/<global batch number>.npz`."""

    def __init__(self):
        super().__init__(write_interval="batch")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        folder = Path(pl_module.plan[2])
        _save_batch(folder / f"{pl_module.mine[batch_idx]:06d}.npz", list(batch_indices), prediction)


def _save_batch(path: Path, positions: list[int], arrays: list[np.ndarray]) -> None:
    """One batch's arrays (concatenated, with offsets) and their positions; atomic, float32 kept bit for bit."""
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, positions=np.asarray(positions, dtype=np.int64), frames=np.concatenate(arrays),
             offsets=np.cumsum([0] + [a.shape[0] for a in arrays]))
    os.replace(tmp, path)


def _load_batch(path: Path) -> tuple[list[int], list[np.ndarray]]:
    with np.load(path) as z:
        frames, offsets = z["frames"], z["offsets"]
        return z["positions"].tolist(), [frames[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _trainer(p: DistributedParams) -> pl.Trainer:
    return pl.Trainer(**trainer_kwargs(p), callbacks=[BatchFiles()], logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=True, inference_mode=True)


def run_batches(inputs: list[str], batches: list[list[int]], encoder: Any, job: Job,
                sharding: Sharding) -> Iterator[list[np.ndarray]]:
    """On launch rank 0: encode `batches` (positions into `inputs`) across the ranks; yield their arrays in order.

    Every rank computes whole batches, so each array is bitwise what one process computes. Called with
    no batches, it still meets the other ranks (they wait for rank 0's plan) and yields nothing.
    """
    sharding.scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".shards-", dir=sharding.scratch)).resolve()  # same path in every rank
    try:
        log.info("sharded extraction: %d batches over %d processes (%s), batch files in %s", len(batches),
                 world_size(sharding.distributed), sharding.distributed.strategy, folder)
        trainer = _trainer(sharding.distributed)
        module = ShardedEncoding(job, sharding.make_encoder, encoder, (inputs, batches, str(folder)))
        trainer.predict(module, return_predictions=False)
        trainer.strategy.barrier("sharded_extraction_written")  # every rank's files are complete (no-op after spawn)
        for number, expected in enumerate(batches):
            path = folder / f"{number:06d}.npz"
            if not path.exists():
                raise RuntimeError(f"sharded extraction: batch {number} was not written by any rank ({path})")
            positions, arrays = _load_batch(path)
            if positions != list(expected):
                raise RuntimeError(f"sharded extraction: batch {number} holds positions {positions[:4]}..., "
                                   f"expected {list(expected)[:4]}...")
            yield arrays
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def serve_share(encoder: Any, job: Job, sharding: Sharding) -> None:
    """On a rank other than 0: compute this rank's share of the batches rank 0 broadcasts; write nothing else."""
    trainer = _trainer(sharding.distributed)
    trainer.predict(ShardedEncoding(job, sharding.make_encoder, encoder, None), return_predictions=False)
    trainer.strategy.barrier("sharded_extraction_written")
    log.info("sharded extraction: rank %d wrote its share", trainer.global_rank)
