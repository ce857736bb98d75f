"""Client-level differential privacy: DP-FedAvg (McMahan et al., ICLR 2018, "Learning
Differentially Private Recurrent Language Models") and its accountant.

Each sampled client's update (its trainable state minus the global state) is clipped to L2 norm C
(`dp_clip`). Gaussian noise of standard deviation z * C (`dp_noise_multiplier` = z) is added to
the sum, by rank 0 (`dp_noise_placement=server`) or as a share of std z * C / sqrt(m) from each of
the round's m sampled clients (`clients`: the sum then carries the full noise and rank 0 never
holds a noiseless sum). Weights are uniform (w_i = 1) and the sum is divided by the fixed
denominator q * N (the expected number of sampled clients), the paper's estimator: with example
counts as weights one client's data could scale its own influence, and the sensitivity of the
average would depend on the data. Clients are Poisson-sampled (each independently with
probability q = clients_per_round / num_clients), which is what the accountant assumes.

Accounting: Opacus' RDP accountant for the sampled Gaussian mechanism (Mironov et al. 2019), one
step per round at (z, q); epsilon is reported at `dp_delta` (default 1 / N^1.1). Opacus is
PyTorch's own DP library and needs nothing beyond torch, numpy and scipy.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field

import torch

from fl.strategies.aggregate import State


def default_delta(num_clients: int) -> float:
    """1 / N^1.1: below 1/N, so that the guarantee is not met by leaking one client's data outright."""
    return 1.0 / num_clients**1.1


def poisson_sample(num_clients: int, rate: float, seed: int, round_idx: int) -> tuple[int, ...]:
    """Each client independently with probability `rate`; seeded per round, the same on every rank."""
    rng = random.Random(seed * 1_000_003 + round_idx * 7_919 + 29)
    return tuple(c for c in range(num_clients) if rng.random() < rate)


def clip(delta: State, bound: float) -> tuple[State, float]:
    """(delta scaled to L2 norm <= bound, its norm before clipping)."""
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in delta.values()))
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in delta.items()}, norm


def gaussian(like: State, std: float, seed: int) -> State:
    """N(0, std^2) noise shaped like `like`, drawn on the CPU from `seed` (the same numbers on any
    device and rank layout), then moved to each tensor's device."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=gen, dtype=torch.float32) * std).to(v.device)
        for k, v in sorted(like.items())
    }


def noise_seed(seed: int, round_idx: int, client: int | None) -> int:
    """One seed per (run, round, client); client None is the server's draw."""
    who = 999_983 if client is None else client
    return (seed * 2_147_483 + round_idx * 104_729 + who * 7_907 + 12_345) % (2**63 - 1)


@dataclass
class PrivacySettings:
    clip: float
    noise_multiplier: float
    placement: str  # server | clients
    rate: float  # q
    num_clients: int
    delta: float
    target_epsilon: float | None = None

    @property
    def denominator(self) -> float:
        """q * N: the expected number of sampled clients."""
        return self.rate * self.num_clients

    def client_noise_std(self, sampled: int) -> float:
        """Each of the m sampled clients' share, so that the sum carries std z * C."""
        return self.noise_multiplier * self.clip / math.sqrt(sampled) if sampled else 0.0


@dataclass
class Accountant:
    """Opacus' RDP accountant, one step per round at (noise multiplier, sample rate)."""

    noise_multiplier: float
    rate: float
    rounds: int = 0
    _history: list = field(default_factory=list)

    def epsilon(self, delta: float, rounds: int | None = None) -> float:
        """Epsilon at `delta` after `rounds` rounds (default: the rounds done)."""
        from opacus.accountants import RDPAccountant

        k = self.rounds if rounds is None else rounds
        if k == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        acc = RDPAccountant()
        acc.history = [(self.noise_multiplier, self.rate, k)]
        with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound, still a bound
            warnings.simplefilter("ignore", UserWarning)
            return float(acc.get_epsilon(delta))

    def step(self) -> None:
        self.rounds += 1
