"""Running across processes, GPUs and nodes on Lightning: the Trainer's launch settings and this process's rank.

`distributed` in params.yaml chooses the launch; Lightning does the launching. Under `ddp` Lightning
re-runs the stage's command once per extra process on a node; across nodes the same command runs on
every node with MASTER_ADDR, MASTER_PORT and NODE_RANK set (or under `torchrun`, which sets RANK).
"""

from __future__ import annotations

import os

from mmser.params import DistributedParams


def world_size(p: DistributedParams) -> int:
    """Processes taking part: devices per node x nodes."""
    return p.devices * p.num_nodes


def launch_rank(p: DistributedParams) -> int:
    """This process's global rank as its launcher set it, before Lightning starts any process.

    torchrun (and SLURM through it) sets RANK. Lightning's own launcher, and a user starting one command
    per node, set NODE_RANK (or torchrun's GROUP_RANK) and, in the processes Lightning adds, LOCAL_RANK.
    A plain process, and the parent of `ddp_spawn`, is rank 0.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * p.devices + int(os.environ.get("LOCAL_RANK", 0))


def is_launch_rank_zero(p: DistributedParams) -> bool:
    """True in the one process that writes the stage's outputs and its MLflow run (always, for `single`)."""
    return p.strategy == "single" or launch_rank(p) == 0


def trainer_kwargs(p: DistributedParams) -> dict:
    """Lightning Trainer arguments for this launch: accelerator, devices, nodes and strategy.

    Samplers are ours (`use_distributed_sampler=False`): the training loader shards with a seeded
    DistributedSampler in every launch, a single process included, so that DDP and one process see
    the same global batches. CPU processes talk over gloo, GPUs over NCCL.
    """
    if p.strategy == "single":
        return dict(accelerator=p.accelerator, devices=1, num_nodes=1, use_distributed_sampler=False)
    from lightning.pytorch.strategies import DDPStrategy

    backend = "gloo" if p.accelerator == "cpu" else None
    strategy = DDPStrategy(process_group_backend=backend, start_method="spawn" if p.strategy == "ddp_spawn"
                           else "popen")
    return dict(accelerator=p.accelerator, devices=p.devices, num_nodes=p.num_nodes, strategy=strategy,
                use_distributed_sampler=False)


def encoder_device(p: DistributedParams, device: str) -> str:
    """The device an encoder runs on in this process: `device` in one process; under DDP the accelerator's,
    one GPU per local rank (as Lightning assigns them), so that every rank's encoder has the same identity."""
    if p.strategy == "single":
        return device
    import torch

    if p.accelerator == "cpu" or (p.accelerator == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
