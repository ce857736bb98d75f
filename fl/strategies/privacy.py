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

As a part, `PrivateAggregation` is the strategy's aggregator: it samples the round (Poisson),
clips and noises on the clients, forms the private mean on the server, records epsilon, and stops
the run before a round that would spend more than `dp_target_epsilon`.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field

import torch

from fl.comm.message import Message
from fl.config import Config
from fl.errors import ConfigError
from fl.strategies.aggregate import Aggregator
from fl.strategies.base import ClientUpdate, RoundPlan, ServerStep, State


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
    """What DP-FedAvg needs from the config, read once."""

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

    @classmethod
    def from_config(cls, cfg: Config) -> PrivacySettings:
        rate = (cfg.clients_per_round or cfg.num_clients) / cfg.num_clients
        delta = cfg.dp_delta if cfg.dp_delta is not None else default_delta(cfg.num_clients)
        assert cfg.dp_clip is not None, "DP needs dp_clip"
        return cls(
            cfg.dp_clip,
            cfg.dp_noise_multiplier,
            cfg.dp_noise_placement,
            rate,
            cfg.num_clients,
            delta,
            cfg.dp_target_epsilon,
        )

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


class PrivateAggregation(Aggregator):
    """DP-FedAvg as the strategy's aggregator (see the module docstring)."""

    name = "dp"
    private = True
    releases_every_round = True  # every round releases a noised update, even one with no client

    def __init__(self, settings: PrivacySettings, seed: int):
        self.dp, self.seed = settings, seed
        self.accountant = Accountant(settings.noise_multiplier, settings.rate)
        self.check_budget()

    def check_budget(self) -> None:
        """A target epsilon that one round already exceeds leaves nothing to run."""
        dp = self.dp
        if dp.target_epsilon is None:
            return
        first = self.accountant.epsilon(dp.delta, 1)
        if first > dp.target_epsilon:
            raise ConfigError(
                f"dp_target_epsilon={dp.target_epsilon} is spent before round 1 (one round costs epsilon "
                f"{first:.3f} at dp_noise_multiplier={dp.noise_multiplier}, sampling rate {dp.rate:g}); raise the "
                "target or the noise"
            )

    @classmethod
    def from_config(cls, config: Config) -> PrivateAggregation:
        if not config.dp:
            raise ConfigError("the dp part needs dp_clip=<L2 bound> (and dp_noise_multiplier); set them in the config")
        return cls(PrivacySettings.from_config(config), config.seed)

    def plan(self, plan: RoundPlan) -> RoundPlan:
        """Poisson sampling (what the accountant assumes), and a stop before a round that would spend
        more than dp_target_epsilon (every rank decides alike)."""
        clients = poisson_sample(self.dp.num_clients, self.dp.rate, self.seed, plan.round)
        return RoundPlan(plan.round, clients, plan.lr, plan.extra, plan.stop or self.over_budget(plan.round))

    def over_budget(self, round_idx: int) -> str | None:
        if self.dp.target_epsilon is None:
            return None
        eps = self.accountant.epsilon(self.dp.delta, round_idx)
        if eps <= self.dp.target_epsilon:
            return None
        return f"round {round_idx} would spend epsilon {eps:.3f} > dp_target_epsilon={self.dp.target_epsilon}"

    def client_message(self, template: Message, u: ClientUpdate, plan: RoundPlan) -> Message:
        """Clip to dp_clip, weight 1, add this client's noise share. Statistics about one client's data
        (examples, loss, norm) do not leave its rank; only the rejection flag does."""
        msg = template.zeros()
        stats = {"examples": 0, "loss_sum": 0.0, "seen": 0, "reject": u.reject, "norm": 0.0}
        msg.scalars.update({f"c{u.client}.{k}": float(v) for k, v in stats.items()})
        if u.reject:
            return msg
        assert not u.parts, f"DP refuses parts that would travel un-noised, got {sorted(u.parts)}"
        clipped, _ = clip(u.delta, self.dp.clip)
        if self.dp.placement == "clients":
            seed = noise_seed(self.seed, plan.round, u.client)
            share = gaussian(clipped, self.dp.client_noise_std(len(plan.clients)), seed)
            clipped = {k: v + share[k] for k, v in clipped.items()}
        for k in msg.parts["delta"]:
            msg.parts["delta"][k].add_(clipped[k])
        msg.scalars["weight"], msg.scalars["accepted"] = 1.0, 1.0
        return msg

    def server_step(self, step: ServerStep) -> None:
        """(sum of clipped updates + noise) / (q N). The server draws the noise in server placement, and in
        client placement when no client was sampled (so every round is noised)."""
        dp, total = self.dp, dict(step.sums.parts["delta"])
        if dp.placement == "server" or not step.plan.clients:
            seed = noise_seed(self.seed, step.plan.round, None)
            noise = gaussian(total, dp.noise_multiplier * dp.clip, seed)
            total = {k: v + noise[k] for k, v in total.items()}
        step.delta = {k: v / dp.denominator for k, v in total.items()}
        step.record["dp_epsilon"] = self.accountant.epsilon(dp.delta, step.plan.round)
        step.record["dp_delta"] = dp.delta
