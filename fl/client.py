"""Local training and evaluation loops. No collectives: the server moves what these return."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fl.data import Encoded, collate, eval_batches, train_batches
from fl.kd import kl_divergence
from fl.metrics import classification_metrics


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A distinct, reproducible seed per (run seed, round, client): same on any rank layout."""
    return (seed * 1_000_003 + round_idx * 10_007 + client_id * 101) % (2**31 - 1)


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
    loss_sum: float  # cross-entropy summed over every example seen (all epochs)
    examples_seen: int
    steps: int


def train_local(
    model: nn.Module,
    data: Encoded,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    weight_decay: float = 0.0,
    kd: KDTargets | None = None,
    on_step: Callable[[], None] | None = None,
) -> TrainResult:
    """AdamW on the model's trainable parameters, fresh each call (per client and round).

    With `kd`, each step also takes the next batch of public rows and the loss becomes
    (1 - alpha) * CE(private batch) + alpha * T^2 * KL(teacher || student) on the public batch.
    """
    torch.manual_seed(seed)  # dropout masks
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    loss_sum, seen, steps = 0.0, 0, 0
    public = _cycle_rows(len(kd.data), batch_size, seed) if kd is not None else None
    for epoch in range(epochs):
        for batch in train_batches(data, batch_size, seed + epoch):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits  # [B, K]
            loss = F.cross_entropy(logits, labels)
            if kd is not None:
                rows = next(public)
                pub = {k: v.to(device) for k, v in collate(kd.data, rows).items()}
                pub.pop("labels")  # public labels stay on the server: clients learn from the teacher
                kl = kl_divergence(model(**pub).logits, kd.logits[rows].to(device), kd.temperature)
                loss = (1.0 - kd.alpha) * loss + kd.alpha * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * labels.numel()
            seen += labels.numel()
            steps += 1
            if on_step is not None:
                on_step()
    return TrainResult(len(data), loss_sum, seen, steps)


def _cycle_rows(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded batches of row positions 0..n-1, reshuffled at each pass."""
    gen = torch.Generator().manual_seed(seed + 7919)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@torch.inference_mode()
def predict(model: nn.Module, data: Encoded, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits [N, K] in the data's row order."""
    model.eval()
    out: list[torch.Tensor] = [None] * len(data)  # type: ignore[list-item]
    for rows, batch in eval_batches(data, batch_size):
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        for j, i in enumerate(rows):
            out[i] = logits[j]
    return torch.stack(out)


def evaluate(
    model: nn.Module, data: Encoded, batch_size: int, device: torch.device, num_labels: int
) -> dict[str, float]:
    """Mean cross-entropy, accuracy, MCC and F1 on `data`."""
    return metrics_from_logits(predict(model, data, batch_size, device), data.labels, num_labels)


def metrics_from_logits(logits: torch.Tensor, labels: list[int], num_labels: int) -> dict[str, float]:
    """Mean cross-entropy, accuracy, MCC and F1 from logits [N, K] and the N labels."""
    target = torch.tensor(labels)
    loss_sum = float(F.cross_entropy(logits.float(), target, reduction="sum"))
    return classification_metrics(logits.argmax(dim=-1), target, loss_sum, num_labels)


def train_steps(num_examples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps a client takes (for progress bars)."""
    return epochs * -(-num_examples // batch_size)
