"""Fit heads on cached embeddings: many fits in the same steps (stacked.py), tensors in memory, whole-batch
gathers, each fit's best epoch kept on its validation part.

One loop runs in one CPU process (OneProcess: no Lightning import) or on a Lightning Fabric (a GPU, or DDP:
gloo on CPUs, NCCL on GPUs, across nodes). With W processes each takes batch_size / W rows of every fit's
seeded shuffled order, so the W shares of step t are the rows one process takes at step t and DDP's averaged
gradient is the single process's gradient. Every process scores the whole validation parts, so the epoch choice
is the same everywhere. `fit_heads` returns what it learned; choosing among candidates (selection.py), writing
outputs and MLflow (the train stage) live elsewhere.
"""

from __future__ import annotations

import dataclasses
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from mmser.errors import UserError
from mmser.features import Features
from mmser.metrics import confusion, unweighted_accuracy, weighted_accuracy
from mmser.models.module import EmotionClassifier
from mmser.params import DistributedParams
from mmser.parallel import FORK, forked, usable_cores
from mmser.stacked import Stack, StackedAdam, StackedHeads

SINGLE = DistributedParams(accelerator="cpu", devices=1, num_nodes=1, strategy="single")


class OneProcess:
    """What the loop uses of a Fabric, for one process on the CPU, without importing Lightning (seconds per
    stage): the default launch. Every other launch (a GPU, `auto`, DDP) is a real Fabric."""

    world_size, global_rank, device = 1, 0, torch.device("cpu")

    def launch(self, function: Callable[..., Any] | None = None, *args, **kwargs) -> Any:
        return None if function is None else function(self, *args, **kwargs)

    def setup(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        return module, optimizer

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def all_reduce(self, tensor: torch.Tensor, reduce_op: str = "sum") -> torch.Tensor:
        return tensor


def forks(fabric) -> bool:
    """Whether work may go to forked copies of this process: one CPU process (OneProcess) on Linux. A Fabric's
    launch (GPUs, DDP processes) gets no fork beside it."""
    return isinstance(fabric, OneProcess) and FORK


def make_fabric(distributed: DistributedParams | None = None):
    """The launch `distributed` asks for: one CPU process (OneProcess), or a Lightning Fabric (`single` on another
    accelerator: one process there; `ddp`, `ddp_spawn`: DDP)."""
    p = distributed or SINGLE
    if p.strategy == "single" and p.accelerator == "cpu":
        return OneProcess()
    from lightning.fabric import Fabric

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
    if isinstance(fabric, OneProcess):
        return _one_thread(function, fabric, *args, **kwargs)
    with tempfile.TemporaryDirectory(prefix="mmser-train-") as scratch:
        path = Path(scratch) / "result.pt"
        fabric.launch(_saved, function, path, *args, **kwargs)
        return torch.load(path, weights_only=False) if path.exists() else None


def _one_thread(function: Callable[..., Any], fabric, *args, **kwargs) -> Any:
    # In every process (spawned ones start with torch's default): heads are tiny, and more threads only add
    # synchronisation (12x slower on a busy 2-core CPU).
    torch.set_num_threads(1)
    return function(fabric, *args, **kwargs)


def _saved(fabric, function: Callable[..., Any], path: Path, *args, **kwargs) -> None:
    result = _one_thread(function, fabric, *args, **kwargs)
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


@dataclasses.dataclass
class Job:
    """One fit to run: a head and weight decay on a training part, chosen on a validation part (none: a refit,
    exactly `epochs` epochs, the last kept), stopped after `early_stopping` epochs without a better score."""

    head: str
    weight_decay: float
    train_ids: list[str]
    val_ids: list[str]
    epochs: int
    early_stopping: int = 0


def fit_head(fabric, features: Features, *, train_ids: list[str], val_ids: list[str], modality: str,
             classes: list[str], seed: int, head: str, weight_decay: float, head_kwargs: dict, epochs: int,
             batch_size: int, standardize: bool, class_weights: bool, early_stopping: int,
             audio_pooling: str = "sum") -> Fit:
    """One fit (see fit_heads)."""
    job = Job(head, weight_decay, train_ids, val_ids, epochs, early_stopping)
    return fit_heads(fabric, features, [job], modality=modality, classes=classes, seed=seed, head_kwargs=head_kwargs,
                     batch_size=batch_size, standardize=standardize, class_weights=class_weights,
                     audio_pooling=audio_pooling)[0]


def fit_heads(fabric, features: Features, jobs: list[Job], *, modality: str, classes: list[str], seed: int,
              head_kwargs: dict, batch_size: int, standardize: bool, class_weights: bool,
              audio_pooling: str = "sum", progress_name: str | None = None, processes: int | None = None) -> list[Fit]:
    """Fit every job in the same steps (stacked per head, stacked.py); each keeps the epoch with its best
    validation UA (ties: lower loss). Each job starts from the weights a separate fit with `seed` would, fits its
    standardiser and class weights on its own training part, and takes its own seeded order of it, the order a
    separate fit takes. Every process of `fabric`'s launch returns the same Fits. `progress_name` names a progress bar
    over epochs (on global rank 0).

    In one CPU process (OneProcess), the heads' groups are shared out among `processes` forked processes (None:
    one per CPU this process may use, at most one per head): a group's fits do not depend on the groups beside it
    (stacked.py), so the Fits are the same, bit for bit, in any number of processes.
    """
    kwargs = dict(modality=modality, classes=classes, seed=seed, head_kwargs=head_kwargs, batch_size=batch_size,
                  standardize=standardize, class_weights=class_weights, audio_pooling=audio_pooling)
    heads = list(dict.fromkeys(job.head for job in jobs))
    n = min(len(heads), processes or usable_cores()) if forks(fabric) else 1
    if n <= 1:
        return _fit_stacked(fabric, features, jobs, progress_name=progress_name, **kwargs)
    members = [[i for i, job in enumerate(jobs) if job.head == head] for head in heads]
    order = sorted(range(len(heads)), key=lambda g: -_cost(features, heads[g], len(members[g]), **kwargs))

    def group(g: int, here: bool) -> list[Fit]:
        if not here:  # a forked child must not enter the OpenMP pool the parent may have started (it would hang)
            torch.set_num_threads(1)
        return _fit_stacked(fabric, features, [jobs[i] for i in members[g]], **kwargs,
                            progress_name=f"{progress_name}: {heads[g]}" if progress_name and here else None)

    fits: dict[int, Fit] = {}
    for g, group_fits in forked(group, order, n).items():
        fits.update(zip(members[g], group_fits))
    return [fits[i] for i in range(len(jobs))]


def _cost(features: Features, head: str, n_jobs: int, *, modality: str, classes: list[str], head_kwargs: dict,
          audio_pooling: str, **_) -> int:
    """A group's work, roughly: its fits x its head's parameters (the larger groups are started first)."""
    model = EmotionClassifier(**_input_dims(features, modality), classes=classes, head=head,
                              audio_pooling=audio_pooling, **head_kwargs)
    return n_jobs * sum(p.numel() for p in model.parameters())


def _input_dims(features: Features, modality: str) -> dict[str, int | None]:
    """EmotionClassifier's text_dim and audio_dim for `modality` on these features (None: the input is not used)."""
    return {"text_dim": features.text.shape[1] if modality in ("text", "fusion") else None,
            "audio_dim": features.audio.shape[-1] if modality in ("audio", "fusion") else None}


def _fit_stacked(fabric, features: Features, jobs: list[Job], *, modality: str, classes: list[str], seed: int,
                 head_kwargs: dict, batch_size: int, standardize: bool, class_weights: bool, audio_pooling: str,
                 progress_name: str | None) -> list[Fit]:
    """fit_heads in this process: every job in the same steps."""
    world = fabric.world_size
    share = process_share(batch_size, world)
    data = _tensors(features, features.ids, modality, "cpu")
    models = [_model(features, data, job, modality=modality, classes=classes, seed=seed, head_kwargs=head_kwargs,
                     standardize=standardize, class_weights=class_weights, audio_pooling=audio_pooling)
              for job in jobs]
    heads = list(dict.fromkeys(job.head for job in jobs))
    members = [[i for i, job in enumerate(jobs) if job.head == head] for head in heads]  # job indices per group
    stack = Stack([StackedHeads([models[i] for i in m]) for m in members])
    optimizer = StackedAdam([(list(g.params), [jobs[i].weight_decay for i in m])
                             for g, m in zip(stack.groups, members)], lr=head_kwargs["lr"])
    wrapped, optimizer = fabric.setup(stack, optimizer)
    data = tuple(fabric.to_device(t) if t is not None else None for t in data)
    train_rows = [torch.from_numpy(features.rows(job.train_ids)) for job in jobs]
    val_rows = [torch.from_numpy(features.rows(job.val_ids)) for job in jobs]
    samplers = [DistributedSampler(range(len(job.train_ids)), num_replicas=world, rank=fabric.global_rank,
                                   shuffle=True, seed=seed) for job in jobs]
    progress = _Progress(jobs, [[p.detach().clone() for p in g.params] for g in stack.groups])
    bar = tqdm(total=max(job.epochs for job in jobs), desc=progress_name, unit="epoch", mininterval=2.0,
               disable=progress_name is None or fabric.global_rank != 0)
    for epoch in range(1, max(job.epochs for job in jobs) + 1):
        progress.running &= torch.tensor([epoch <= job.epochs for job in jobs])
        if not progress.running.any():
            break
        bar.set_postfix(fits=int(progress.running.sum()), refresh=False)
        bar.update(1)
        rows_of_epoch, n_steps = _epoch_rows(samplers, train_rows, progress.running, epoch, share)
        rows_of_epoch = fabric.to_device(rows_of_epoch)
        wrapped.train()
        loss_sum = torch.zeros(len(jobs), device=fabric.device)
        live = _live(members, progress.running, world, fabric.device)
        for step in range(rows_of_epoch.shape[1]):
            rows = rows_of_epoch[:, step]
            seeds = [zlib.crc32(f"{seed}/{head}/{epoch}/{step}".encode()) for head in heads]
            losses = _losses(wrapped, stack, members, live, seeds, data, rows, fabric, world)
            for g, m in zip(optimizer.param_groups, members):
                g["active"] = (rows[m] >= 0).any(1)
            optimizer.zero_grad()
            fabric.backward(losses.sum())
            optimizer.step()
            loss_sum += losses.detach()
        if epoch % head_kwargs["step_size"] == 0:  # StepLR: the learning rate times gamma every step_size epochs
            for g in optimizer.param_groups:
                g["lr"] *= head_kwargs["gamma"]
        if world > 1:  # the global batch's loss is the mean of the processes' share losses
            loss_sum = fabric.all_reduce(loss_sum, reduce_op="sum") / world
        scores = _validate(stack, members, data, val_rows, progress.running, classes, fabric.device)
        improved = progress.record(epoch, (loss_sum.cpu() / n_steps.clamp(min=1)).tolist(), scores)
        for g, m, kept in zip(stack.groups, members, progress.best):
            keep = improved[m].to(fabric.device)
            for k, p in zip(kept, g.params):
                k.copy_(torch.where(keep.view((-1,) + (1,) * (p.dim() - 1)), p.detach(), k))
    bar.close()
    return progress.fits(stack, members, models)


class _Progress:
    """Per job: its history, best score, epochs since it improved, whether it still runs, and (per group) the
    parameters of every job's kept epoch."""

    def __init__(self, jobs: list[Job], best: list[list[torch.Tensor]]):
        self.jobs, self.best = jobs, best
        self.histories: list[list[dict]] = [[] for _ in jobs]
        self.best_score = [float("-inf")] * len(jobs)
        self.since_best = [0] * len(jobs)
        self.running = torch.ones(len(jobs), dtype=torch.bool)

    def record(self, epoch: int, train_loss: list[float], scores: dict[int, dict]) -> torch.Tensor:
        """Log the epoch of every running job; stop those out of patience; return which ones improved."""
        improved = torch.zeros(len(self.jobs), dtype=torch.bool)
        for i, job in enumerate(self.jobs):
            if not self.running[i]:
                continue
            entry = {"epoch": epoch, "train_loss": train_loss[i]}
            if job.val_ids:
                entry.update(scores[i])
                if entry["val_select"] > self.best_score[i]:
                    self.best_score[i], self.since_best[i], improved[i] = entry["val_select"], 0, True
                else:
                    self.since_best[i] += 1
                if job.early_stopping and self.since_best[i] >= job.early_stopping:
                    self.running[i] = False
            self.histories[i].append(entry)
        return improved

    def fits(self, stack: Stack, members: list[list[int]], models: list[EmotionClassifier]) -> list[Fit]:
        """Each job's Fit, in job order: its kept epoch's model (a refit's last), history and best epoch."""
        fits: dict[int, Fit] = {}
        for group, m, kept in zip(stack.groups, members, self.best):
            for slot, i in enumerate(m):
                model, history = EmotionClassifier(**models[i].hparams), self.histories[i]
                if not self.jobs[i].val_ids:
                    model.load_state_dict(group.state_of(slot))
                    fits[i] = Fit(model.eval(), history, len(history), None)
                    continue
                model.load_state_dict(group.state_of(slot, kept))
                first = max(history, key=lambda h: (h["val_select"], -h["epoch"]))  # first epoch with the best
                fits[i] = Fit(model.eval(), history, int(first["epoch"]), float(first["val_ua"]))
        return [fits[i] for i in range(len(self.jobs))]


def _epoch_rows(samplers: list[DistributedSampler], train_rows: list[torch.Tensor], running: torch.Tensor,
                epoch: int, share: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(jobs, steps, share) rows of this process's share of the epoch in each running job's seeded order (-1
    where a job has no row left, and for stopped jobs), and each job's number of steps."""
    orders = []
    for i, sampler in enumerate(samplers):
        sampler.set_epoch(epoch - 1)
        orders.append(train_rows[i][torch.tensor(list(sampler))] if running[i] else torch.zeros(0, dtype=torch.long))
    steps = torch.tensor([-(-len(o) // share) for o in orders])
    rows = torch.full((len(orders), int(steps.max()) * share), -1, dtype=torch.long)
    for i, o in enumerate(orders):
        rows[i, :len(o)] = o
    return rows.view(len(orders), -1, share), steps


def _model(features: Features, data: tuple, job: Job, *, modality: str, classes: list[str], seed: int,
           head_kwargs: dict, standardize: bool, class_weights: bool, audio_pooling: str) -> EmotionClassifier:
    """The job's model as a separate fit with `seed` starts it: seeded initial weights, and the standardiser and
    class weights of its training part (audio statistics over real frames, not the padding)."""
    torch.manual_seed(seed)
    text, audio, lengths, y = _take(data, torch.from_numpy(features.rows(job.train_ids)))
    weights = inverse_frequency_weights(y.numpy(), len(classes)) if class_weights else None
    model = EmotionClassifier(**_input_dims(features, modality), classes=classes, head=job.head,
                              class_weights=weights, audio_pooling=audio_pooling, weight_decay=job.weight_decay,
                              **head_kwargs)
    if standardize:
        if model.text_norm is not None:
            model.text_norm.fit(text)
        if model.audio_norm is not None:
            model.audio_norm.fit(audio if audio.dim() == 2 else torch.cat([a[:n] for a, n in zip(audio, lengths)]))
    return model


def _inputs(data: tuple, rows: torch.Tensor) -> tuple:
    """(M, B, ...) text, audio and lengths of `rows` (M, B); -1 rows read row 0 and are masked by the caller."""
    text, audio, lengths, _ = _take(data, rows.clamp(min=0))
    return text, audio, lengths


def _live(members: list[list[int]], running: torch.Tensor, world: int, device) -> list[torch.Tensor | None]:
    """Per group, the slots of its running jobs (None: all of them; an empty tensor: none). Under DDP every
    model runs every step, so that every parameter gets a gradient in every process."""
    live = []
    for m in members:
        on = running[m]
        live.append(None if world > 1 or bool(on.all()) else torch.nonzero(on).flatten().to(device))
    return live


def _losses(wrapped, stack: Stack, members: list[list[int]], live: list[torch.Tensor | None], seeds: list[int],
            data: tuple, rows: torch.Tensor, fabric, world: int) -> torch.Tensor:
    """Each job's loss on its rows of this step (0 where it has none or does not run), (jobs,), such that DDP's
    mean over the `world` processes' gradients is each job's gradient on its whole global batch.

    Unweighted, each share's mean does that (the shares are equal); class-weighted cross-entropy divides by the
    weights of the whole batch's labels, gathered over the processes.
    """
    index = [torch.tensor(m, device=rows.device) if slots is None else torch.tensor(m, device=rows.device)[slots]
             for m, slots in zip(members, live)]
    logits = wrapped([_inputs(data, rows[i]) if len(i) else None for i in index], live, seeds)
    out = torch.zeros(rows.shape[0], device=rows.device)
    for g, i, slots, z in zip(stack.groups, index, live, logits):
        if z is None:
            continue
        r = rows[i]
        valid = (r >= 0).to(z.dtype)
        y = data[3][r.clamp(min=0)]
        ce = nn.functional.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none").view_as(valid)
        weights = g.buffer("loss.weight")
        if weights is not None and slots is not None:
            weights = weights[slots]
        w = valid if weights is None else valid * torch.gather(weights, 1, y)
        total = w.sum(1)
        if weights is not None and world > 1:
            total = fabric.all_reduce(total, reduce_op="sum") / world
        out = out.index_put((i,), (ce * w).sum(1) / total.clamp(min=1e-12))
    return out


@torch.no_grad()
def _validate(stack: Stack, members: list[list[int]], data: tuple, val_rows: list[torch.Tensor],
              running: torch.Tensor, classes: list[str], device) -> dict[int, dict[str, float]]:
    """Each running job's validation loss, UA, WA and selection score (UA; ties go to the lower loss), in eval
    mode."""
    stack.eval()
    scores = {}
    for g, m in zip(stack.groups, members):
        slots = [s for s, i in enumerate(m) if running[i] and len(val_rows[i])]
        if not slots:
            continue
        sizes = [len(val_rows[m[s]]) for s in slots]
        rows = torch.full((len(slots), max(sizes)), -1, dtype=torch.long)
        for k, s in enumerate(slots):
            rows[k, :sizes[k]] = val_rows[m[s]]
        rows = rows.to(device)
        logits = g(*_inputs(data, rows), live=torch.tensor(slots, device=device))
        weights = g.buffer("loss.weight")
        for k, s in enumerate(slots):
            z, y = logits[k, :sizes[k]], data[3][rows[k, :sizes[k]]]
            loss = float(nn.functional.cross_entropy(z, y, weight=None if weights is None else weights[s]))
            matrix = confusion(y.cpu().numpy(), z.argmax(-1).cpu().numpy(), len(classes))
            ua = unweighted_accuracy(matrix)
            # On a small validation set UA ties often; the tie goes to the lower validation loss (the term is
            # <= 1e-3: below one UA step unless K classes x n per class > 1000).
            scores[m[s]] = {"val_loss": loss, "val_ua": ua, "val_wa": weighted_accuracy(matrix),
                            "val_select": ua - 1e-4 * min(loss, 10.0)}
    return scores


def save_model(model: EmotionClassifier, path: Path) -> None:
    """Write `model`'s checkpoint to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
