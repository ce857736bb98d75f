"""K clients in one forward pass: their trainable tensors stacked [K, ...] in the model, the frozen
base shared. No collectives; `fl.client.runners.BatchedRunner` drives it.

With LoRA the clients differ only in their adapters and heads, and every trainable leaf of a peft
model is an `nn.Linear` (lora_A, lora_B, the head in modules_to_save). `stack(model, states)`
swaps each such Linear for a `StackedLinear` holding the K clients' weights [K, out, in]; a batch
of K x B rows (client-major: rows c*B .. c*B+B-1 are client c's) runs the frozen base once over all
of them, and each row goes through its own client's adapter and head (one batched matmul per
layer). The loss is the sum of the clients' own mean losses, so each client's gradient is its own.

`StackedAdamW` is AdamW (the arithmetic of torch's) over the stacked tensors, with a learning
rate and a step count per client and a mask of the clients that step: a client whose shard is
used up stops moving (a zero gradient alone would still move it through Adam's moments).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fl import models

State = dict[str, torch.Tensor]


class StackedLinear(nn.Module):
    """K copies of one Linear: input [K * B, ..., in] (client-major) -> [K * B, ..., out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)  # [K, out, in]
        self.bias = nn.Parameter(bias) if bias is not None else None  # [K, out]
        self.only: int | None = None  # every row through one client's weights (that client's own extra forwards)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.only is not None:
            bias = self.bias[self.only] if self.bias is not None else None
            return nn.functional.linear(
                x, self.weight[self.only].to(x.dtype), None if bias is None else bias.to(x.dtype)
            )
        k = self.weight.shape[0]
        xs = x.reshape(k, -1, x.shape[-1])  # [K, B * ..., in]
        out = torch.bmm(xs, self.weight.transpose(1, 2).to(xs.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[:, None, :]
        return out.reshape(*x.shape[:-1], out.shape[-1])


def trainable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Module name -> every Linear with a trainable weight (the leaves that differ between clients)."""
    found = {}
    for name, module in model.named_modules():
        own = [p for _, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(module) is not nn.Linear:
            raise ValueError(
                f"parallel_clients>1 stacks trainable Linear layers (LoRA adapters, heads); {name} is a "
                f"{type(module).__name__}: use parallel_clients=1"
            )
        found[name] = module
    return found


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@contextlib.contextmanager
def stack(model: nn.Module, states: list[State]) -> Iterator[dict[str, StackedLinear]]:
    """The model with its trainable Linears stacked from `states` (one trainable state per client);
    on exit the original Linears are back. Yields module name -> StackedLinear."""
    linears = trainable_linears(model)
    params = models.trainable_parameters(model)
    by_ptr = {p.data_ptr(): k for k, p in params.items()}
    stacked: dict[str, StackedLinear] = {}
    for name, lin in linears.items():
        wkey, bkey = by_ptr[lin.weight.data_ptr()], by_ptr.get(lin.bias.data_ptr()) if lin.bias is not None else None
        weight = torch.stack([s[wkey].detach().to(lin.weight.dtype) for s in states]).to(lin.weight.device)
        bias = torch.stack([s[bkey].detach() for s in states]).to(lin.weight.device) if bkey else None
        stacked[name] = StackedLinear(weight, bias)
        stacked[name].keys = (wkey, bkey)  # type: ignore[assignment]
        _set(model, name, stacked[name])
    try:
        yield stacked
    finally:
        for name, lin in linears.items():
            _set(model, name, lin)


@contextlib.contextmanager
def only(stacked: dict[str, StackedLinear], c: int) -> Iterator[None]:
    """Forwards through client c's weights alone (a client term's own forward, e.g. KD's public rows)."""
    for mod in stacked.values():
        mod.only = c
    try:
        yield
    finally:
        for mod in stacked.values():
            mod.only = None


def client_states(stacked: dict[str, StackedLinear], k: int) -> list[State]:
    """Each client's trainable tensors (detached copies), keyed like the trainable state."""
    out: list[State] = [{} for _ in range(k)]
    for mod in stacked.values():
        wkey, bkey = mod.keys  # type: ignore[attr-defined]
        for c in range(k):
            out[c][wkey] = mod.weight[c].detach().clone()
            if bkey:
                out[c][bkey] = mod.bias[c].detach().clone()  # type: ignore[index]
    return out


class ClientView:
    """One client's slice of a stacked parameter, as the client terms see a parameter: `.grad`,
    `.detach()`, `.device`, `.dtype` and the in-place `sub_` they use."""

    def __init__(self, param: nn.Parameter, c: int):
        self.param, self.c = param, c

    @property
    def grad(self) -> torch.Tensor | None:
        return self.param.grad[self.c] if self.param.grad is not None else None

    def detach(self) -> torch.Tensor:
        return self.param.detach()[self.c]

    @property
    def device(self) -> torch.device:
        return self.param.device

    @property
    def dtype(self) -> torch.dtype:
        return self.param.dtype

    def sub_(self, other: torch.Tensor, alpha: float = 1.0) -> None:
        self.param.data[self.c].sub_(other, alpha=alpha)


def client_params(stacked: dict[str, StackedLinear], c: int) -> dict[str, ClientView]:
    """Client c's parameters keyed like the trainable state (what the client terms act on)."""
    out: dict[str, ClientView] = {}
    for mod in stacked.values():
        wkey, bkey = mod.keys  # type: ignore[attr-defined]
        out[wkey] = ClientView(mod.weight, c)
        if bkey:
            out[bkey] = ClientView(mod.bias, c)  # type: ignore[arg-type]
    return out


class StackedAdamW:
    """AdamW over stacked [K, ...] tensors with per-client lr, step count and an active mask."""

    def __init__(
        self,
        params: list[nn.Parameter],
        k: int,
        lr_scale: list[float],
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params, self.lr_scale, self.wd, self.betas, self.eps = params, lr_scale, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = [0] * k

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lrs: list[float], active: list[bool]) -> None:
        """One step for each active client at its own learning rate `lrs[c]` (times each tensor's scale)."""
        b1, b2 = self.betas
        for c, on in enumerate(active):
            if not on:
                continue
            self.steps[c] += 1
            t = self.steps[c]
            bc1, bc2 = 1 - b1**t, math.sqrt(1 - b2**t)
            for p, m, v, scale in zip(self.params, self.m, self.v, self.lr_scale, strict=True):
                if p.grad is None:
                    continue
                lr, g, pc, mc, vc = lrs[c] * scale, p.grad[c], p.data[c], m[c], v[c]
                pc.mul_(1 - lr * self.wd)
                mc.lerp_(g, 1 - b1)
                vc.mul_(b2).addcmul_(g, g, value=1 - b2)
                pc.addcdiv_(mc, (vc.sqrt() / bc2).add_(self.eps), value=-lr / bc1)


def train_together(
    runner: Any, ctxs: list[Any], terms: list[list[Any]], stacked: dict[str, StackedLinear], on_step: Any
) -> list[Any]:
    """The K clients' local training through the one loop (`fl.client.step.train_steps`); one
    TrainResult each. `runner` gives the model, task, shards and schedule (`fl.client.runners.BatchedRunner`)."""
    from fl.client.step import Lane, train_steps
    from fl.client.train import epochs_of

    model, task, schedule, device = runner.model, runner.task, runner.schedule, runner.device
    sched = schedule.at(ctxs[0].plan.lr)
    datas = [runner.shards[ctx.client] for ctx in ctxs]
    lanes = [
        Lane(
            epochs_of(task, d, sched, ctx.seed),
            sched.steps_for(len(d)),
            len(d),
            ts,
            client_params(stacked, c),
            lr=sched.lr,
        )
        for c, (d, ctx, ts) in enumerate(zip(datas, ctxs, terms, strict=True))
    ]
    engine = StackedClients(model, task, stacked, sched, [lane.total for lane in lanes], device)
    return train_steps(
        model,
        lanes,
        engine,
        device=device,
        precision=sched.precision,
        seed=ctxs[0].seed,
        heap_trim_steps=sched.heap_trim_steps,
        on_step=on_step,
    )


class StackedClients:
    """K stacked clients as the one loop steps them (`fl.client.step.Engine`): the frozen base runs
    once over their joined batches, each client's loss is the mean over its own rows, one
    `StackedAdamW` steps the active clients at their own rates, and each client's rate follows its
    own transformers schedule (on a one-number optimizer)."""

    def __init__(
        self,
        model: nn.Module,
        task: Any,
        stacked: dict[str, StackedLinear],
        sched: Any,
        totals: list[int],
        device: torch.device,
    ):
        from transformers import get_scheduler

        self.model, self.task, self.stacked, self.device = model, task, stacked, device
        self.clocks = [_clock(sched, total, get_scheduler) for total in totals]
        self.adam = _adamw(stacked, task, sched, len(totals))

    def forward(self, batches: list[dict[str, torch.Tensor] | None]) -> Any:
        from fl.client.step import Losses

        k = len(batches)
        joined, mask, rows = _join(self.task, batches)
        joined = {key: v.to(self.device, non_blocking=True) for key, v in joined.items()}
        losses, weights = self.task.row_losses(self.model, joined)
        mask = mask.to(self.device)
        losses, weights = losses.view(k, -1) * mask, weights.view(k, -1) * mask
        per = losses.sum(1) / weights.sum(1).clamp(min=1e-12)  # [K]
        return Losses([per[c] for c in range(k)], [float(r) for r in rows], [1] * k, rows)

    def client(self, c: int) -> contextlib.AbstractContextManager:
        return only(self.stacked, c)

    def zero_grad(self) -> None:
        self.adam.zero_grad()

    def backward(self, total: torch.Tensor) -> list[float]:
        total.backward()
        return [opt.param_groups[0]["lr"] for opt, _ in self.clocks]

    def step(self, lrs: list[float], active: list[bool]) -> None:
        self.adam.step(lrs, active)

    def tick(self, c: int) -> None:
        self.clocks[c][0].step()  # no gradient: a no-op that keeps the scheduler's order check quiet
        self.clocks[c][1].step()


def _clock(sched: Any, total: int, get_scheduler: Any) -> tuple[torch.optim.Optimizer, Any]:
    """A client's learning rate over its steps: transformers' own schedule on a one-number optimizer."""
    warmup = sched.warmup_for(total)
    name = "constant_with_warmup" if sched.scheduler == "constant" and warmup else sched.scheduler
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=sched.lr)
    return dummy, get_scheduler(name, dummy, num_warmup_steps=warmup, num_training_steps=total)


def _adamw(stacked: dict[str, StackedLinear], task: Any, sched: Any, k: int) -> StackedAdamW:
    """AdamW over the stacked tensors; the head's at head_lr / lr times the clients' rates."""
    params, scales = [], []
    for name, mod in stacked.items():
        for p, suffix in ((mod.weight, "weight"), (mod.bias, "bias")):
            if p is not None:
                head = sched.head_lr is not None and task.is_head(f"{name}.{suffix}")
                params.append(p)
                scales.append(sched.head_lr / sched.lr if head else 1.0)
    return StackedAdamW(params, k, scales, sched.weight_decay)


def _join(task: Any, batches: list[Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
    """The K clients' batches as one client-major batch of K x B rows, B the largest; a smaller or
    missing batch is padded with copies of a real row, masked out (the mask [K, B]). Also each
    client's real row count."""
    real = next(b for b in batches if b is not None)
    width = max(b["labels"].shape[0] for b in batches if b is not None)
    rows = [b["labels"].shape[0] if b is not None else 0 for b in batches]
    mask = torch.zeros(len(batches), width)
    padded = []
    for c, b in enumerate(batches):
        b = b if b is not None else {key: v[:1] for key, v in real.items()}
        n = b["labels"].shape[0]
        mask[c, : rows[c]] = 1
        if n < width:
            b = {key: torch.cat([v, v[:1].expand(width - n, *v.shape[1:])]) for key, v in b.items()}
        padded.append(b)
    return task.join(padded), mask, rows
