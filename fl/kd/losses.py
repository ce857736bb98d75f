"""Distillation losses: temperature-scaled KL between logits, and attention-map transfer.

Fixes over the original work: the KL is taken between log-probabilities at temperature T (not raw
logits), scaled by T^2 so gradients keep their size as T changes (Hinton et al. 2015), and
averaged per example ('batchmean').
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch. Logits are [B, K]."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels).

    With labels=None the CE term is dropped and the KL term keeps its full weight alpha.
    """
    loss = alpha * kl_divergence(student_logits, teacher_logits, temperature)
    if labels is not None and alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits.float(), labels)
    return loss


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i <-> teacher layer i * L_t // L_s (student k <-> teacher 2k when depth halves)."""
    return [(i, i * teacher_layers // student_layers) for i in range(student_layers)]


def attention_loss(
    student_attn: Sequence[torch.Tensor], teacher_attn: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean MSE between mapped attention maps ([B, H, L, L] each; heads averaged if counts differ)."""
    pairs = layer_map(len(student_attn), len(teacher_attn))
    total = student_attn[0].new_zeros(())
    for i, j in pairs:
        s, t = student_attn[i].float(), teacher_attn[j].float()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
        err = (s - t) ** 2
        if mask is not None:  # only real query and key positions count: [B, 1, L, 1] * [B, 1, 1, L]
            m = (mask[:, None, :, None] * mask[:, None, None, :]).to(err.dtype)
            total = total + (err * m).sum() / (m.sum() * err.shape[1]).clamp(min=1)
        else:
            total = total + err.mean()
    return total / len(pairs)
