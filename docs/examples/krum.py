"""Krum (Blanchard et al., NeurIPS 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent"), a server-side algorithm that fl does not ship, written outside fl.

Each round rank 0 gets every sampled client's own change (`gathers = True`, unweighted:
`weighted = False`), scores each by the summed squared distance to its n - f - 2 nearest other
changes, and takes the change with the lowest score (Multi-Krum: the mean of the m lowest) as the
round's pseudo-gradient. The server optimizer and every other part then run as usual.

    parts: [{_component_: docs.examples.krum.Krum, f: 1}]        # in a recipe (docs/examples/krum.yaml)
    fl.run(cfg, parts=[Krum(f=1)])                               # from Python
"""

from __future__ import annotations

import torch

from fl.strategies import Aggregator
from fl.strategies.base import ServerStep, State


def krum(changes: list[State], f: int, m: int = 1) -> State:
    """The mean of the m changes with the lowest Krum score (m=1: Krum itself), in float32."""
    n = len(changes)
    keys = sorted(changes[0])
    flat = torch.stack([torch.cat([c[k].double().flatten().cpu() for k in keys]) for c in changes])
    dist = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)  # [n, n] squared distances
    near = max(n - f - 2, 1)
    scores = [float(dist[i][torch.arange(n) != i].sort().values[:near].sum()) if n > 1 else 0.0 for i in range(n)]
    best = sorted(range(n), key=lambda i: (scores[i], i))[: max(1, min(m, n))]
    return {k: torch.stack([changes[i][k].float() for i in best]).mean(0) for k in keys}


class Krum(Aggregator):
    """Krum / Multi-Krum as the strategy's aggregator (it replaces the example-weighted mean)."""

    name = "krum"
    gathers, weighted = True, False

    def __init__(self, f: int = 1, m: int = 1):
        if f < 0 or m < 1:
            raise ValueError("Krum takes f >= 0 (the clients it tolerates) and m >= 1 (the changes it averages)")
        self.f, self.m = f, m

    def server_step(self, step: ServerStep) -> None:
        got = [msg.parts["delta"] for _, msg in sorted((step.individual or {}).items()) if msg.scalars["accepted"]]
        step.delta = krum(got, self.f, self.m)
        step.record["krum_clients"] = len(got)
