"""Classification metrics from predictions and labels: accuracy, Matthews correlation, F1.

Plain torch over a confusion matrix, so they hold for any number of classes and need no sklearn.
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """C[i, j] = number of examples of true class i predicted as j (int64, [K, K])."""
    idx = labels.long() * num_labels + preds.long()
    return torch.bincount(idx, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def accuracy(cm: torch.Tensor) -> float:
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else 0.0


def matthews_corrcoef(cm: torch.Tensor) -> float:
    """Multi-class MCC (Gorodkin 2004), equal to the binary phi coefficient for K=2; 0 if undefined."""
    c = cm.double()
    s = c.sum()
    correct = c.diag().sum()
    t = c.sum(dim=1)  # true counts per class
    p = c.sum(dim=0)  # predicted counts per class
    num = correct * s - (t * p).sum()
    den = math.sqrt(float(s * s - (p * p).sum()) * float(s * s - (t * t).sum()))
    return float(num) / den if den > 0 else 0.0


def f1(cm: torch.Tensor) -> float:
    """Binary: F1 of class 1 (GLUE's convention). More classes: macro-average F1."""
    c = cm.double()
    tp = c.diag()
    prec_den, rec_den = c.sum(dim=0), c.sum(dim=1)
    per_class = torch.where(
        prec_den + rec_den > 0, 2 * tp / (prec_den + rec_den).clamp(min=1e-12), torch.zeros_like(tp)
    )
    if cm.shape[0] == 2:
        return float(per_class[1])
    return float(per_class.mean())


def classification_metrics(cm: torch.Tensor, loss_sum: float) -> dict[str, float]:
    """The per-evaluation record from a confusion matrix and the summed cross-entropy: mean
    cross-entropy, accuracy, MCC, F1."""
    n = int(cm.sum())
    return {
        "loss": loss_sum / n if n else float("nan"),
        "accuracy": accuracy(cm),
        "mcc": matthews_corrcoef(cm),
        "f1": f1(cm),
    }


def interval(hits: int, n: int) -> float:
    """Half-width of the 95% interval of a mean of n 0/1 scores: 1.96 x the sample standard error
    (lm-evaluation-harness's `mean_stderr`, which divides the variance by n - 1); nan below 2 rows."""
    if n < 2:
        return float("nan")
    p = hits / n
    return 1.96 * math.sqrt(p * (1 - p) / (n - 1))
