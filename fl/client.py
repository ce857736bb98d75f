"""Local training and evaluation loops. No collectives: the round moves what these return."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fl.data import Encoded, collate, eval_batches, train_batches
from fl.kd import kl_divergence
from fl.metrics import classification_metrics

if TYPE_CHECKING:  # the strategy owns its local terms; the loop only calls their hooks
    from fl.strategies.local import LocalTerms

HEAD_MARKERS = ("classifier", "score.", "modules_to_save")  # parameter names of a classification head


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
    head_lr: float | None = None  # the classification head's own learning rate (None: lr)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)

    def warmup_for(self, total_steps: int) -> int:
        return self.warmup_steps or math.ceil(self.warmup_ratio * total_steps)


@dataclass
class KDTargets:
    """Distillation on the clients: teacher logits [P, K] for P public rows, and how to weigh them."""

    data: Encoded  # the P public rows, tokenized for the student
    logits: torch.Tensor  # [P, K] teacher logits, row-aligned with data
    alpha: float
    temperature: float


@dataclass
class TrainResult:
    num_examples: int  # the client's weight in the average: examples it holds
    loss_sum: float  # training loss summed over every example seen (all epochs)
    examples_seen: int
    steps: int
    lr_sum: float  # sum of the step sizes taken (SCAFFOLD's denominator)
    last_lr: float


def param_groups(model: nn.Module, lr: float, head_lr: float | None) -> list[dict]:
    """Trainable parameters in one group, or two when the head has its own learning rate."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr is None:
        return [{"params": [p for _, p in named], "lr": lr}]
    head = [p for n, p in named if any(m in n for m in HEAD_MARKERS)]
    body = [p for n, p in named if not any(m in n for m in HEAD_MARKERS)]
    return [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_local(
    model: nn.Module,
    data: Encoded,
    schedule: LocalSchedule,
    *,
    seed: int,
    device: torch.device,
    kd: KDTargets | None = None,
    terms: LocalTerms | None = None,
    params: dict[str, nn.Parameter] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """AdamW on the model's trainable parameters, fresh each call (per client and round).

    With `kd`, each step also takes the next batch of public rows and the loss becomes
    (1 - alpha) * CE(private batch) + alpha * T^2 * KL(teacher || student) on the public batch.
    `terms` (FedProx, SCAFFOLD) act on `params`, the trainable parameters keyed like the trainable state.
    """
    from transformers import get_scheduler

    torch.manual_seed(seed)  # dropout masks
    opt = torch.optim.AdamW(param_groups(model, schedule.lr, schedule.head_lr), weight_decay=schedule.weight_decay)
    total = schedule.epochs * -(-len(data) // schedule.batch_size)
    warmup = schedule.warmup_for(total)
    name = "constant_with_warmup" if schedule.scheduler == "constant" and warmup else schedule.scheduler
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    scaler = torch.amp.GradScaler(device.type, enabled=schedule.precision == "fp16")
    if terms is not None and terms.active and params is None:
        raise ValueError("local terms (FedProx, SCAFFOLD) need the trainable parameters by name")
    model.train()
    loss_sum, seen, steps, lr_sum, lr = 0.0, 0, 0, 0.0, schedule.lr
    public = _cycle_rows(len(kd.data), schedule.batch_size, seed) if kd is not None else None
    for epoch in range(schedule.epochs):
        for batch in train_batches(data, schedule.batch_size, seed + epoch):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            with autocast(device, schedule.precision):
                logits = model(**batch).logits  # [B, K]
                loss = F.cross_entropy(logits.float(), labels)
                if kd is not None:
                    rows = next(public)  # type: ignore[arg-type]
                    pub = {k: v.to(device) for k, v in collate(kd.data, rows).items()}
                    pub.pop("labels")  # public labels stay on the server: clients learn from the teacher
                    kl = kl_divergence(model(**pub).logits, kd.logits[rows].to(device), kd.temperature)
                    loss = (1.0 - kd.alpha) * loss + kd.alpha * kl
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            lr = opt.param_groups[0]["lr"]
            if terms is not None:
                terms.after_backward(params)  # type: ignore[arg-type]
            scaler.step(opt)
            scaler.update()
            if terms is not None:
                terms.after_step(params, lr)  # type: ignore[arg-type]
            sched.step()
            lr_sum += lr
            loss_sum += float(loss.detach()) * labels.numel()
            seen += labels.numel()
            steps += 1
            if on_step is not None:
                on_step(labels.numel())
    return TrainResult(len(data), loss_sum, seen, steps, lr_sum, lr)


def _cycle_rows(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded batches of row positions 0..n-1, reshuffled at each pass."""
    gen = torch.Generator().manual_seed(seed + 7919)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@torch.inference_mode()
def predict(model: nn.Module, data: Encoded, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits [N, K] (fp32) in the data's row order, on `device`."""
    model.eval()
    out: torch.Tensor | None = None
    for rows, batch in eval_batches(data, batch_size):
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        if out is None:
            out = torch.zeros(len(data), logits.shape[-1], device=device)
        out[torch.tensor(rows, device=device)] = logits
    return out if out is not None else torch.zeros(0, 0, device=device)


def evaluate(
    model: nn.Module, data: Encoded, batch_size: int, device: torch.device, num_labels: int
) -> dict[str, float]:
    """Mean cross-entropy, accuracy, MCC and F1 on `data`."""
    return metrics_from_logits(predict(model, data, batch_size, device), data.labels, num_labels)


def metrics_from_logits(logits: torch.Tensor, labels: list[int], num_labels: int) -> dict[str, float]:
    """Mean cross-entropy, accuracy, MCC and F1 from logits [N, K] and the N labels."""
    logits = logits.float().cpu()
    target = torch.tensor(labels)
    loss_sum = float(F.cross_entropy(logits, target, reduction="sum"))
    return classification_metrics(logits.argmax(dim=-1), target, loss_sum, num_labels)


def train_steps(num_examples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps a client takes (for progress bars)."""
    return epochs * -(-num_examples // batch_size)
