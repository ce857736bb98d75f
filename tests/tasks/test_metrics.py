import math
import random

import torch

from fl.tasks.metrics import classification_metrics, confusion_matrix, f1, matthews_corrcoef


def reference_mcc(y, p, k):
    """Gorodkin's R_K written out from its definition (pure Python)."""
    c = [[0] * k for _ in range(k)]
    for t, q in zip(y, p, strict=True):
        c[t][q] += 1
    s = len(y)
    correct = sum(c[i][i] for i in range(k))
    t_k = [sum(c[i]) for i in range(k)]
    p_k = [sum(c[i][j] for i in range(k)) for j in range(k)]
    num = correct * s - sum(t_k[i] * p_k[i] for i in range(k))
    den = math.sqrt(s * s - sum(x * x for x in p_k)) * math.sqrt(s * s - sum(x * x for x in t_k))
    return num / den if den else 0.0


def test_binary_mcc_is_phi():
    y = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
    p = [1, 0, 1, 0, 1, 0, 1, 0, 0, 1]
    tp, tn, fp, fn = 4, 3, 1, 2
    phi = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    cm = confusion_matrix(torch.tensor(p), torch.tensor(y), 2)
    assert math.isclose(matthews_corrcoef(cm), phi, rel_tol=1e-12)
    assert math.isclose(f1(cm), 2 * tp / (2 * tp + fp + fn), rel_tol=1e-12)


def test_multiclass_mcc_matches_reference():
    rng = random.Random(0)
    y = [rng.randrange(3) for _ in range(200)]
    p = [t if rng.random() < 0.6 else rng.randrange(3) for t in y]
    cm = confusion_matrix(torch.tensor(p), torch.tensor(y), 3)
    assert math.isclose(matthews_corrcoef(cm), reference_mcc(y, p, 3), rel_tol=1e-12)


def test_degenerate_cases():
    cm = confusion_matrix(torch.tensor([1, 1, 1]), torch.tensor([0, 1, 1]), 2)
    assert matthews_corrcoef(cm) == 0.0  # one predicted class: undefined -> 0, as sklearn
    perfect = confusion_matrix(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1, 0]), 2)
    assert matthews_corrcoef(perfect) == 1.0


def test_classification_metrics_record():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 0, 1]), 2)
    m = classification_metrics(cm, loss_sum=2.0)
    assert m["accuracy"] == 0.75 and m["loss"] == 0.5
    assert math.isclose(m["f1"], 0.8)
