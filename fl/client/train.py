"""One client's local training: its schedule (`LocalSchedule`), its AdamW and transformers
schedule, its seed, and `train_local`, which runs it through the one loop (`fl.client.step`). No
collectives and no task specifics: the loss of a batch is the task's (`fl.tasks`), and every
algorithm's local change (FedProx, SCAFFOLD, KD, FlexLoRA's mask) is a `ClientTerm` called at its
place in the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from fl.client.memory import TRIM_EVERY_STEPS
from fl.client.step import Lane, SingleClient, train_steps
from fl.config import Config
from fl.strategies.base import ClientTerm, TrainResult


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A distinct, reproducible seed per (run seed, round, client): same on any rank layout."""
    return (seed * 1_000_003 + round_idx * 10_007 + client_id * 101) % (2**31 - 1)


@dataclass(frozen=True)
class LocalSchedule:
    """How one client trains in one round: AdamW with a transformers schedule over its local steps."""

    lr: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.0
    scheduler: str = "constant"  # transformers' get_scheduler name: constant | linear | cosine
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    head_lr: float | None = None  # the task head's own learning rate (None: lr)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler) | auto
    max_steps: int | None = None  # a cap on the optimizer steps of one client round (FlowerTune's max_steps)
    heap_trim_steps: int = 0  # on the CPU, malloc_trim every this many steps (0: never inside training)

    @classmethod
    def from_config(cls, cfg: Config, processes: int = 1) -> LocalSchedule:
        """The config's schedule; `processes` sharing the machine decide the heap trims' default."""
        trim = cfg.heap_trim_steps if cfg.heap_trim_steps is not None else (TRIM_EVERY_STEPS if processes > 1 else 0)
        return cls(
            cfg.lr,
            cfg.local_epochs,
            cfg.batch_size,
            cfg.weight_decay,
            cfg.lr_scheduler,
            cfg.warmup_steps,
            cfg.warmup_ratio,
            cfg.head_lr,
            cfg.precision,
            cfg.max_local_steps,
            trim,
        )

    def steps_for(self, num_examples: int) -> int:
        """Optimizer steps of one client round over `num_examples` rows."""
        steps = self.epochs * -(-num_examples // self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def examples_for(self, num_examples: int) -> int:
        """Rows one client round goes through (every epoch, up to `max_steps` batches)."""
        return min(self.epochs * num_examples, self.steps_for(num_examples) * self.batch_size)

    def at(self, lr: float) -> LocalSchedule:
        """The same schedule at a round's learning rate."""
        return replace(self, lr=lr)

    def warmup_for(self, total_steps: int) -> int:
        return self.warmup_steps or math.ceil(self.warmup_ratio * total_steps)


def param_groups(model: nn.Module, lr: float, head_lr: float | None, is_head: Callable[[str], bool]) -> list[dict]:
    """Trainable parameters in one group, or two when the head has its own learning rate."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr is None:
        return [{"params": [p for _, p in named], "lr": lr}]
    head = [p for n, p in named if is_head(n)]
    body = [p for n, p in named if not is_head(n)]
    return [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]


def optimizer(model: nn.Module, task: Any, schedule: LocalSchedule, total: int, device: torch.device) -> tuple:
    """(AdamW, its transformers schedule over `total` steps, the fp16 GradScaler), fresh for one client round."""
    from transformers import get_scheduler

    groups = param_groups(model, schedule.lr, schedule.head_lr, task.is_head)
    opt = torch.optim.AdamW(groups, weight_decay=schedule.weight_decay)
    warmup = schedule.warmup_for(total)
    name = "constant_with_warmup" if schedule.scheduler == "constant" and warmup else schedule.scheduler
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    return opt, sched, torch.amp.GradScaler(device.type, enabled=schedule.precision == "fp16")


def train_local(
    model: nn.Module,
    task: Any,
    data: Any,
    schedule: LocalSchedule,
    *,
    seed: int,
    device: torch.device,
    terms: Sequence[ClientTerm] = (),
    params: dict[str, nn.Parameter] | None = None,
    on_step: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    wrapped: nn.Module | None = None,
) -> TrainResult:
    """One client's local training through the one loop (`fl.client.step.train_steps`): AdamW on
    the model's trainable parameters, fresh each call (per client and round).

    `task` gives the batches and their loss; `terms` act on the loss and on `params` (the trainable
    parameters keyed like the trainable state) around each step, in order. A client of several
    ranks (`shard` = (this rank's place, the client's ranks)) runs the task's loss through `wrapped`
    (DistributedDataParallel over the client's group) on its slice of each batch; `loss_sum` then
    holds this rank's share of the batch losses and `examples_seen` its own rows (summed over the
    group they are the client's). On the CPU the heap is trimmed every few steps (`fl.client.memory`)."""
    total = schedule.steps_for(len(data))
    engine = SingleClient(
        model, task, optimizer(model, task, schedule, total, device), device, shard=shard, wrapped=wrapped
    )
    lane = Lane(
        epochs_of(task, data, schedule, seed),
        total,
        len(data),
        terms,
        params if params is not None else {},
        lr=schedule.lr,
    )
    [result] = train_steps(
        model,
        [lane],
        engine,
        device=device,
        precision=schedule.precision,
        seed=seed,
        heap_trim_steps=schedule.heap_trim_steps,
        on_step=on_step,
    )
    return result


def epochs_of(task: Any, data: Any, schedule: LocalSchedule, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """A client's batches over its local epochs, epoch e in the task's order seeded by seed + e."""
    for epoch in range(schedule.epochs):
        yield from task.train_batches(data, schedule.batch_size, seed + epoch)
