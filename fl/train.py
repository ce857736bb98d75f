"""One client's local training: AdamW with a transformers schedule, mixed precision, the task's loss
and the strategy's client terms. No collectives and no task specifics: the loss of a batch is the
task's (`fl.tasks`), and every algorithm's local change (FedProx, SCAFFOLD, KD, FlexLoRA's mask) is
a `ClientTerm` called at its place in the step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from fl.config import Config
from fl.memory import TRIM_EVERY_STEPS, trim_after_step
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
            cfg.lr, cfg.local_epochs, cfg.batch_size, cfg.weight_decay, cfg.lr_scheduler,
            cfg.warmup_steps, cfg.warmup_ratio, cfg.head_lr, cfg.precision, cfg.max_local_steps, trim,
        )  # fmt: skip

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


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 autocast runs emulated CPU kernels: 27x slower than fp32 for MiniLM-L6's training
    steps, measured on an AVX2-only AMD EPYC (2 cores).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, since torch 2.3
        return any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision=auto` made concrete for a device: bf16 where it is native, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for a precision (fp32: none); `auto` resolves per device (`resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    """AdamW on the model's trainable parameters, fresh each call (per client and round).

    `task` gives the batches and their loss; `terms` act on the loss and on `params` (the trainable
    parameters keyed like the trainable state) around each step, in order. A client of several
    ranks (`shard` = (this rank's place, the client's ranks)) runs the task's loss through `wrapped`
    (DistributedDataParallel over the client's group) on its slice of each batch; `loss_sum` then
    holds this rank's share of the batch losses and `examples_seen` its own rows (summed over the
    group they are the client's). On the CPU the heap is trimmed every few steps (`fl.memory`)."""
    torch.manual_seed(seed)  # dropout masks
    total = schedule.steps_for(len(data))
    opt, sched, scaler = optimizer(model, task, schedule, total, device)
    params = params if params is not None else {}
    model.train()
    loss_sum, seen, steps, lr_sum, lr = 0.0, 0, 0, 0.0, schedule.lr
    for epoch in range(schedule.epochs):
        if steps >= total:
            break
        for batch in task.train_batches(data, schedule.batch_size, seed + epoch):
            if steps >= total:
                break
            batch, scale, rows = my_slice(task, batch, shard)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, schedule.precision):
                loss, n = task.loss(wrapped or model, batch)
                loss = loss * scale if shard[1] > 1 else loss
                for term in terms:
                    loss = term.loss(model, loss)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            lr = opt.param_groups[0]["lr"]
            for term in terms:
                term.after_backward(params)
            scaler.step(opt)
            scaler.update()
            for term in terms:
                term.after_step(params, lr)
            sched.step()
            lr_sum += lr
            loss_sum += float(loss.detach()) * rows / shard[1]
            seen += n if scale else 0
            steps += 1
            if on_step is not None:
                on_step(n)
            trim_after_step(steps, device, schedule.heap_trim_steps)  # the heap's growth over varying widths
    return TrainResult(len(data), loss_sum, seen, steps, lr_sum, lr)
