"""Pure aggregation over name-keyed tensors: no process group, no model, easy to test.

An update carries its own weight (`num_examples`). Keys must match before anything is combined,
and every result is fp32 whatever the tensors' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


@dataclass
class Update:
    """What one client sends back: its trainable state (or its change) and how many examples it trained on."""

    state: State
    num_examples: int


def check_same_keys(reference: State, other: State) -> None:
    if set(reference) != set(other):
        extra = sorted(set(other) - set(reference))[:3]
        missing = sorted(set(reference) - set(other))[:3]
        raise ValueError(f"update keys differ from the global state: unexpected {extra}, missing {missing}")
    for k, v in reference.items():
        if other[k].shape != v.shape:
            raise ValueError(f"update tensor {k!r} has shape {tuple(other[k].shape)}, expected {tuple(v.shape)}")


def accumulate(acc: State | None, state: State, weight: float) -> State:
    """acc + weight * state, in fp32 (a new fp32 accumulator when acc is None)."""
    if acc is None:
        return {k: v.detach().float() * weight for k, v in state.items()}
    check_same_keys(acc, state)
    for k, v in state.items():
        acc[k].add_(v.detach().float(), alpha=weight)
    return acc


def finalize(weighted_sum: State, total_weight: float) -> State:
    """Divide a weighted sum by its total weight."""
    if total_weight <= 0:
        raise ValueError(f"total weight {total_weight} must be positive; no client reported examples")
    return {k: v / total_weight for k, v in weighted_sum.items()}


def weighted_average(updates: Sequence[Update]) -> State:
    """Example-weighted mean of the updates' states: sum_i n_i * theta_i / sum_i n_i."""
    if not updates:
        raise ValueError("no updates to aggregate")
    acc: State | None = None
    for u in updates:
        if u.num_examples < 0:
            raise ValueError(f"num_examples={u.num_examples} must be >= 0")
        acc = accumulate(acc, u.state, float(u.num_examples))
    return finalize(acc, float(sum(u.num_examples for u in updates)))  # type: ignore[arg-type]


def _stack(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """name -> [n_clients, *shape] fp32, after checking every state has the same keys and shapes."""
    if not states:
        raise ValueError("no updates to aggregate")
    for s in states[1:]:
        check_same_keys(states[0], s)
    return {k: torch.stack([s[k].detach().float() for s in states]) for k in states[0]}


def coordinate_median(states: Sequence[State]) -> State:
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates"); with an even count, the mean of the two middle values."""
    out = {}
    for k, x in _stack(states).items():
        srt = x.sort(dim=0).values
        n = srt.shape[0]
        out[k] = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
    return out


def trimmed_mean(states: Sequence[State], ratio: float) -> State:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate drop the floor(ratio * n)
    largest and smallest values, average the rest (unweighted)."""
    if not 0.0 <= ratio < 0.5:
        raise ValueError(f"trim ratio {ratio} must be in [0, 0.5)")
    out = {}
    for k, x in _stack(states).items():
        n = x.shape[0]
        cut = int(ratio * n)
        out[k] = x.sort(dim=0).values[cut : n - cut].mean(dim=0)
    return out
