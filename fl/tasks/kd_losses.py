"""Distillation losses: temperature-scaled KL between logits (dense, or over a top-k support with a
tail bucket), and attention-map transfer.

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
    return with_ce(kl_divergence(student_logits, teacher_logits, temperature), student_logits, labels, alpha)


def with_ce(kl: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """alpha * kl + (1 - alpha) * CE(logits, labels); the CE term only with labels and alpha < 1."""
    loss = alpha * kl
    if labels is not None and alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(logits.float(), labels)
    return loss


def topk_kl(
    student_logits: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p || q) over a top-k support plus one tail bucket, mean over the N positions.

    p: the target's probabilities at temperature T on its k most likely tokens ([N, k], `indices`
    [N, k]), normalised over the whole vocabulary before the cut; its tail mass is 1 - sum(p). q:
    softmax(student / T) over the whole vocabulary, gathered on the same k tokens, and its own tail
    1 - sum(q). The KL of these (k + 1)-bucket distributions is the dense KL when k is the vocabulary
    (the tail is empty) and a lower bound of it otherwise (coarsening never adds divergence).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q_top = log_q.gather(-1, indices.long())
    p = probs.float().clamp(min=0)
    p_tail = (1.0 - p.sum(-1)).clamp(min=0)
    q_tail = (1.0 - log_q_top.exp().sum(-1)).clamp(min=1e-12)
    top = torch.where(p > 0, p * (p.clamp(min=1e-30).log() - log_q_top), torch.zeros_like(p)).sum(-1)
    tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp(min=1e-30).log() - q_tail.log()), torch.zeros_like(p_tail))
    return (top + tail).mean() * temperature**2


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
