"""The teacher's distillation steps: mutual distillation with the aggregated student
(kd_placement=server) and learning from the clients' student ensemble (kd_placement=clients).
Runs on rank 0; knows nothing of ranks or collectives. What a model outputs for a batch of rows
is the task's (`task.kd_forward`). Pre-training lives in `fl.kd.pretrain`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fl.config import Config
from fl.tasks.kd_losses import attention_loss, kd_loss, with_ce
from fl.tasks.order import row_batches


@dataclass(frozen=True)
class DistillSettings:
    """What the distillation steps need from the config, read once."""

    epochs: int
    batch_size: int
    student_lr: float
    alpha: float
    temperature: float
    attention_weight: float

    @classmethod
    def from_config(cls, cfg: Config) -> DistillSettings:
        return cls(cfg.kd_epochs, cfg.batch_size, cfg.lr, cfg.kd_alpha, cfg.kd_temperature, cfg.kd_attention_weight)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Seeded shuffle of positions 0..n-1, in batches."""
    return iter(row_batches(n, batch_size, seed))


def mutual_distill(
    task: Any,
    teacher: nn.Module,
    student: nn.Module,
    data_t: Any,
    data_s: Any,
    kd: DistillSettings,
    teacher_opt: torch.optim.Optimizer,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Teacher and student learn from each other on the same public rows (both tokenizations).

    student: kd_loss(s, t) (+ attention MSE to the mapped teacher layers); teacher: kd_loss(t, s).
    The student's optimizer is fresh each round, since its weights were just replaced by the average.
    """
    torch.manual_seed(seed)  # dropout masks
    student_opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=kd.student_lr)
    attn = kd.attention_weight > 0
    teacher.train()
    student.train()
    sums, n = {"student": 0.0, "teacher": 0.0}, 0
    for epoch in range(kd.epochs):
        for pos in _batches(len(data_s), kd.batch_size, seed + epoch):
            t_out = task.kd_forward(teacher, data_t, pos, device, attn)
            s_out = task.kd_forward(student, data_s, pos, device, attn)
            labels, t_logits, s_logits = s_out["labels"], t_out["logits"], s_out["logits"]
            loss_s = kd_loss(s_logits, t_logits.detach(), labels, alpha=kd.alpha, temperature=kd.temperature)
            if attn:
                t_maps = [a.detach() for a in t_out["attentions"]]
                loss_s = loss_s + kd.attention_weight * attention_loss(s_out["attentions"], t_maps, s_out["mask"])
            loss_t = kd_loss(t_logits, s_logits.detach(), labels, alpha=kd.alpha, temperature=kd.temperature)
            student_opt.zero_grad(set_to_none=True)
            teacher_opt.zero_grad(set_to_none=True)
            (loss_s + loss_t).backward()  # the two graphs are disjoint (each sees the other detached)
            student_opt.step()
            teacher_opt.step()
            sums["student"] += float(loss_s.detach()) * labels.numel()
            sums["teacher"] += float(loss_t.detach()) * labels.numel()
            n += labels.numel()
    return {f"kd_{k}_loss": v / max(n, 1) for k, v in sums.items()}


def learn_from_targets(
    task: Any,
    model: nn.Module,
    data: Any,
    targets: dict[str, torch.Tensor],
    kd: DistillSettings,
    opt: torch.optim.Optimizer,
    seed: int,
    device: torch.device,
) -> float:
    """The teacher learns from the clients' ensemble (the task's targets of the public rows); mean loss."""
    torch.manual_seed(seed)  # dropout masks
    model.train()
    total, n = 0.0, 0
    for epoch in range(kd.epochs):
        for pos in _batches(len(data), kd.batch_size, seed + epoch):
            kl, out = task.kd_kl(model, data, pos, targets, kd.temperature, device)
            labels = out["labels"]
            loss = with_ce(kl, out["logits"], labels, kd.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * labels.numel()
            n += labels.numel()
    return total / max(n, 1)
