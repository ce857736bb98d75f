"""Aggregators: how the clients' updates become the round's pseudo-gradient.

- `MeanAggregation` (FedAvg, McMahan et al. 2017): each client sends n_i * (theta_i - global);
  the server divides the sum by sum_i n_i. One reduce carries every client's contribution.
- `RobustAggregation`: coordinate-wise median or trimmed mean (Yin et al. 2018, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates"), unweighted, over every accepted
  client's own update: rank 0 gathers them (`gathers`), unweighted (`weighted = False`).

The combine rules underneath are pure functions over name-keyed tensors; keys must match before
anything is combined, and every result is fp32 whatever the tensors' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl.comm.message import Message
from fl.strategies.base import ClientUpdate, Part, RoundPlan, ServerStep, State


def check_same_keys(reference: State, other: State) -> None:
    if set(reference) != set(other):
        extra = sorted(set(other) - set(reference))[:3]
        missing = sorted(set(reference) - set(other))[:3]
        raise ValueError(f"update keys differ from the global state: unexpected {extra}, missing {missing}")
    for k, v in reference.items():
        if other[k].shape != v.shape:
            raise ValueError(f"update tensor {k!r} has shape {tuple(other[k].shape)}, expected {tuple(v.shape)}")


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


class Aggregator(Part):
    """The part that turns client updates into messages and their sums into the pseudo-gradient."""

    name = "aggregate"
    weighted = True  # a client's change travels multiplied by its examples (summed mode), else as it is
    private = False  # per-client statistics stay on their ranks (DP)

    def client_message(self, template: Message, u: ClientUpdate, plan: RoundPlan) -> Message:
        """One client's contribution: its statistics, and its change weighted by its examples
        (summed mode) or as it is (gathered mode), with its parts' upload as they travel."""
        msg = template.zeros()
        stats = {"examples": u.num_examples, "loss_sum": u.loss_sum, "seen": u.seen, "reject": u.reject, "norm": u.norm}
        msg.scalars.update({f"c{u.client}.{k}": float(v) for k, v in stats.items()})
        if u.reject:
            return msg
        weight = float(u.num_examples)
        alpha = weight if self.weighted else 1.0
        for k in msg.parts["delta"]:
            msg.parts["delta"][k].add_(u.delta[k], alpha=alpha)
        for part, tensors in u.parts.items():
            for k, v in tensors.items():
                msg.parts[part][k].add_(v)
        msg.scalars["weight"], msg.scalars["accepted"] = weight, 1.0
        return msg


class MeanAggregation(Aggregator):
    """The example-weighted mean of the accepted clients' changes."""

    def server_step(self, step: ServerStep) -> None:
        weight = step.sums.scalars["weight"]
        step.delta = {k: v / weight for k, v in step.sums.parts["delta"].items()}


class RobustAggregation(Aggregator):
    """Coordinate-wise median or trimmed mean over the accepted clients' own changes."""

    gathers, weighted = True, False

    def __init__(self, rule: str, trim_ratio: float = 0.1):
        if rule not in ("median", "trimmed_mean"):
            raise ValueError(f"aggregation={rule!r} is not robust; choose median or trimmed_mean")
        self.rule, self.trim_ratio = rule, trim_ratio

    @classmethod
    def median(cls) -> RobustAggregation:
        return cls("median")

    @classmethod
    def trimmed(cls, trim_ratio: float = 0.1) -> RobustAggregation:
        return cls("trimmed_mean", trim_ratio)

    def server_step(self, step: ServerStep) -> None:
        got = sorted((step.individual or {}).items())
        deltas = [m.parts["delta"] for _, m in got if m.scalars["accepted"] > 0]
        step.delta = coordinate_median(deltas) if self.rule == "median" else trimmed_mean(deltas, self.trim_ratio)
