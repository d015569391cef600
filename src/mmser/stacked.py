"""Many fits as one: same-architecture heads stacked on a leading model axis and run with `torch.func.vmap`, and
an Adam that steps each model on its own (its weight decay, its step count, only when it had rows).

A head is an MLP on a few hundred inputs: one optimiser step costs microseconds of arithmetic and about a
millisecond of Python. Training every candidate on every fold in the same steps pays that millisecond once.
Each model keeps its own parameters, standardiser, class weights, data order and dropout draws, so stacking
changes nothing a model learns from another except its dropout draws: they come from one stream per
architecture and step, so they depend on that architecture's fits (its weight decays x folds), not on which
other heads are candidates.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import stack_module_state, vmap


class StackedHeads(nn.Module):
    """M modules of one architecture as one: parameters and buffers stacked on dim 0, inputs (M, B, ...)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.params = nn.ParameterList([nn.Parameter(params[k].detach().clone()) for k in self.names])
        for i, k in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[k].clone())
        # The module whose forward is called with each model's tensors; it holds none of them (meta device) and
        # is not registered, so it is neither trained nor moved, only switched between train and eval.
        object.__setattr__(self, "_base", copy.deepcopy(models[0]).to("meta"))
        # Where each stacked tensor lives in _base: (its module's _parameters or _buffers dict, its attribute).
        object.__setattr__(self, "_slots", {k: _slot(self._base, k, "_parameters") for k in self.names}
                           | {k: _slot(self._base, k, "_buffers") for k in self.buffer_names})

    def buffer(self, name: str) -> torch.Tensor | None:
        """The stacked buffer `name` (e.g. the loss's class weights), None if the modules have none."""
        return getattr(self, f"buffer{self.buffer_names.index(name)}") if name in self.buffer_names else None

    def train(self, mode: bool = True) -> "StackedHeads":
        self._base.train(mode)
        return super().train(mode)

    def forward(self, *inputs: torch.Tensor | None, live: torch.Tensor | None = None) -> torch.Tensor:
        """Each model's forward on its own slice of every input: (M, B, ...) -> (M, B, classes). With `live` (slot
        indices), only those models run, on (len(live), B, ...) inputs; the others get no gradient."""
        params = dict(zip(self.names, self.params))
        buffers = {k: getattr(self, f"buffer{i}") for i, k in enumerate(self.buffer_names)}
        if live is not None:
            params = {k: v.index_select(0, live) for k, v in params.items()}
            buffers = {k: v.index_select(0, live) for k, v in buffers.items()}

        dims = (0, 0) + tuple(None if x is None else 0 for x in inputs)
        return vmap(self._call, in_dims=dims, randomness="different")(params, buffers, *inputs)

    def _call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
              *inputs: torch.Tensor | None) -> torch.Tensor:
        """_base's forward with `params` and `buffers` in place of its own: torch.func.functional_call's job,
        without its checks (tied weights, strictness), which cost about 0.4 ms a call, as much as a tiny head's
        forward. The meta tensors are put back afterwards."""
        kept = {}
        for k, t in (*params.items(), *buffers.items()):
            where, attr = self._slots[k]
            kept[k], where[attr] = where[attr], t
        try:
            return self._base(*inputs)
        finally:
            for k, t in kept.items():
                where, attr = self._slots[k]
                where[attr] = t

    def state_of(self, m: int, params: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Model m's state dict (from `params` in place of the live parameters, e.g. a kept epoch's)."""
        params = params if params is not None else [p.detach() for p in self.params]
        state = {k: p[m].cpu().clone() for k, p in zip(self.names, params)}
        state.update({k: getattr(self, f"buffer{i}")[m].cpu().clone() for i, k in enumerate(self.buffer_names)})
        return state


class Stack(nn.Module):
    """Groups of StackedHeads trained in the same steps (one group per architecture)."""

    def __init__(self, groups: list[StackedHeads]):
        super().__init__()
        self.groups = nn.ModuleList(groups)

    def forward(self, inputs: list[tuple | None], live: list[torch.Tensor | None],
                seeds: list[int]) -> list[torch.Tensor | None]:
        """Each group on its inputs (None: the group does not run this step), its `live` models only, its random
        draws (dropout) from its own seed: a group's fits do not depend on which other groups train beside it."""
        out = []
        for group, x, slots, seed in zip(self.groups, inputs, live, seeds):
            _generator(group.params[0].device).manual_seed(seed)
            out.append(None if x is None else group(*x, live=slots))
        return out


def _slot(module: nn.Module, name: str, kind: str) -> tuple[dict, str]:
    """The dict (`kind`: _parameters or _buffers) of the submodule holding `name` (a dotted state-dict key), and
    the key in it."""
    path, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(path), kind), attr


def _generator(device: torch.device) -> torch.Generator:
    """The default generator of `device` (torch.manual_seed would also queue a seeding of every CUDA device, with
    a stack trace, on each call: 0.1 ms, and memory, per step on a CPU)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class StackedAdam:
    """torch.optim.Adam (L2 weight decay added to the gradient) for stacked models: each model is stepped by
    Adam's fused kernel on its own slices, with its own weight decay and step count.

    One param group per StackedHeads: `weight_decay` lists each model's, and `active` ((M,) bool, set before
    each step) says which models step; the others keep their parameters, moments and step counts, as if that
    step had not happened to them. Not a torch.optim.Optimizer: constructing one imports torch._dynamo (about a
    second per train stage); the loop sets each group's `lr` itself (StepLR's schedule, training.py).
    """

    def __init__(self, groups: list[tuple[list[torch.Tensor], list[float]]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [{"params": list(params), "weight_decay": list(wd), "lr": lr, "betas": betas, "eps": eps,
                              "active": torch.ones(len(wd), dtype=torch.bool)} for params, wd in groups]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _slices(self, p: torch.Tensor) -> list[tuple]:
        """Per model: its slices of the parameter, gradient, moments and its step count (written through)."""
        state = self.state.setdefault(p, {})
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            state["step"] = [torch.zeros((), dtype=torch.float32, device=p.device) for _ in range(p.shape[0])]
            state["slices"] = list(zip(p.unbind(0), state["exp_avg"].unbind(0), state["exp_avg_sq"].unbind(0),
                                       state["step"]))
        return [(param, grad, avg, sq, step) for (param, avg, sq, step), grad in zip(state["slices"],
                                                                                   p.grad.unbind(0))]

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim.adam import adam

        for group in self.param_groups:
            slices = [self._slices(p) for p in group["params"] if p.grad is not None]
            active = group["active"].tolist()
            beta1, beta2 = group["betas"]
            for wd in sorted(set(group["weight_decay"])):
                models = [m for m, (w, on) in enumerate(zip(group["weight_decay"], active)) if on and w == wd]
                if not models:
                    continue
                params, grads, avgs, sqs, steps = zip(*(s[m] for s in slices for m in models))
                adam(list(params), list(grads), list(avgs), list(sqs), [], list(steps), fused=True, amsgrad=False,
                     beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=wd, eps=group["eps"], maximize=False)
        return None
