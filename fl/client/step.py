"""THE local training loop: every runner trains its clients through `train_steps`.

One step, for K clients at once (K = 1 for the sequential and the data-parallel runners, K =
`parallel_clients` for the batched one): take the next batch of each client that still has steps
left, compute each client's loss under autocast (the `Engine` says how: one model, or K stacked
clients over one frozen base), add each client's terms (FedProx, SCAFFOLD, KD, ...: `ClientTerm`),
backward the sum, let the terms act on the gradients, step, let the terms act on the new weights,
advance each client's schedule and count its statistics. A new client term or precision mode is
written here once.

What differs between runners lives behind the small `Engine` protocol: how the K losses are
computed from the K batches, how the parameters step (torch's AdamW with a GradScaler, or one
AdamW over stacked tensors with a learning rate per client), and through whose weights a term's
own forward runs.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from fl.client.memory import trim_after_step
from fl.models.precision import autocast
from fl.strategies.base import ClientTerm, TrainResult


@dataclass
class Lane:
    """One client's place in the loop: its batches, its step budget, its terms and the parameters
    they act on (keyed like the trainable state), and its statistics so far."""

    batches: Iterator[dict[str, torch.Tensor]]
    total: int  # optimizer steps this client takes (its batches may end first)
    num_examples: int  # the client's rows (its weight in the average)
    terms: Sequence[ClientTerm] = ()
    params: dict[str, Any] = field(default_factory=dict)
    loss_sum: float = 0.0
    seen: int = 0
    steps: int = 0
    lr_sum: float = 0.0
    lr: float = 0.0

    def result(self) -> TrainResult:
        return TrainResult(self.num_examples, self.loss_sum, self.seen, self.steps, self.lr_sum, self.lr)


@dataclass
class Losses:
    """One step's forward: each client's loss [scalar], and for its statistics the rows it counts
    (loss_sum += loss * rows / share) and the examples it saw."""

    losses: list[torch.Tensor | None]
    rows: list[float]
    share: list[int]
    seen: list[int]


class Engine(Protocol):
    """How a runner's K clients compute their losses and step (`SingleClient`, `fl.client.batched`)."""

    def forward(self, batches: list[dict[str, torch.Tensor] | None]) -> Losses: ...

    def client(self, c: int) -> contextlib.AbstractContextManager: ...

    def zero_grad(self) -> None: ...

    def backward(self, total: torch.Tensor) -> list[float]: ...

    def step(self, lrs: list[float], active: list[bool]) -> None: ...

    def tick(self, c: int) -> None: ...


def train_steps(
    model: nn.Module,
    lanes: list[Lane],
    engine: Engine,
    *,
    device: torch.device,
    precision: str,
    seed: int,
    heap_trim_steps: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[TrainResult]:
    """The K clients of `lanes` trained together, step by step (see the module docstring); one
    TrainResult each. A client whose batches or steps are used up stops stepping."""
    torch.manual_seed(seed)  # dropout masks (K > 1: one draw for the K clients)
    model.train()
    while True:
        batches = [next(lane.batches, None) if lane.steps < lane.total else None for lane in lanes]
        active = [b is not None for b in batches]
        if not any(active):
            break
        with autocast(device, precision):
            out = engine.forward(batches)
            for c in (c for c in range(len(lanes)) if active[c]):
                with engine.client(c):  # a term's own forward runs through client c's weights
                    for term in lanes[c].terms:
                        out.losses[c] = term.loss(model, out.losses[c])
            total = functools.reduce(operator.add, [out.losses[c] for c in range(len(lanes)) if active[c]])
        engine.zero_grad()
        lrs = engine.backward(total)
        for c in (c for c in range(len(lanes)) if active[c]):
            for term in lanes[c].terms:
                term.after_backward(lanes[c].params)
        engine.step(lrs, active)
        for c in (c for c in range(len(lanes)) if active[c]):
            _after_step(lanes[c], engine, c, lrs[c], out)
        if on_step is not None:
            on_step(sum(out.seen))
        trim_after_step(max(lane.steps for lane in lanes), device, heap_trim_steps)  # fl.client.memory
    return [lane.result() for lane in lanes]


def _after_step(lane: Lane, engine: Engine, c: int, lr: float, out: Losses) -> None:
    """Client c's terms on its new weights, its schedule's tick and its statistics."""
    for term in lane.terms:
        term.after_step(lane.params, lr)
    engine.tick(c)
    lane.lr_sum += lr
    lane.lr = lr
    lane.loss_sum += float(out.losses[c].detach()) * out.rows[c] / out.share[c]  # type: ignore[union-attr]
    lane.seen += out.seen[c]
    lane.steps += 1


class SingleClient:
    """One client on one model: torch's AdamW with its transformers schedule and, for fp16, a
    GradScaler. A client of several ranks (`shard` = (this rank's place, the client's ranks)) runs
    the task's loss through `wrapped` (DistributedDataParallel over the client's group) on its
    slice of each batch (`my_slice`)."""

    def __init__(
        self,
        model: nn.Module,
        task: Any,
        parts: tuple,
        device: torch.device,
        *,
        shard: tuple[int, int] = (0, 1),
        wrapped: nn.Module | None = None,
    ):
        self.model, self.task, self.device, self.shard, self.wrapped = model, task, device, shard, wrapped
        self.opt, self.sched, self.scaler = parts  # `fl.client.train.optimizer`

    def forward(self, batches: list[dict[str, torch.Tensor] | None]) -> Losses:
        batch, scale, rows = my_slice(self.task, batches[0], self.shard)  # type: ignore[arg-type]
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        loss, n = self.task.loss(self.wrapped or self.model, batch)
        loss = loss * scale if self.shard[1] > 1 else loss
        return Losses([loss], [rows], [self.shard[1]], [n if scale else 0])

    def client(self, c: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def backward(self, total: torch.Tensor) -> list[float]:
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.opt)
        return [self.opt.param_groups[0]["lr"]]

    def step(self, lrs: list[float], active: list[bool]) -> None:
        self.scaler.step(self.opt)
        self.scaler.update()

    def tick(self, c: int) -> None:
        self.sched.step()


def my_slice(task: Any, batch: dict[str, torch.Tensor], shard: tuple[int, int]) -> tuple[dict, float, int]:
    """This rank's rows of a client's batch (every `count`-th from `index`), the factor that makes the
    client ranks' averaged gradient that of the whole batch (local weight * count / batch weight: the
    weight is the task's loss terms, rows or tokens), and the batch's row count."""
    rows = next(iter(batch.values())).shape[0]
    index, count = shard
    if count == 1:
        return batch, 1.0, rows
    local = {k: v[index::count] for k, v in batch.items()}
    if next(iter(local.values())).shape[0] == 0:  # fewer rows than ranks: take part in backward, weight 0
        return {k: v[:1] for k, v in batch.items()}, 0.0, rows
    return local, task.batch_weight(local) * count / max(task.batch_weight(batch), 1), rows
