"""Server optimizers on the pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization").

The pseudo-gradient of a round is the aggregated client change, delta = mean_i(x_i - x). With
server learning rate eta, betas (b1, b2) and adaptivity tau (Algorithm 2 of the paper):

    sgd       x <- x + eta * delta                           (eta = 1: FedAvg)
    momentum  m <- b1 * m + delta;  x <- x + eta * m         (FedAvgM, Hsu et al. 2019)
    adagrad   v <- v + delta^2
    adam      v <- b2 * v + (1 - b2) * delta^2
    yogi      v <- v - (1 - b2) * delta^2 * sign(v - delta^2)
              (these three:) m <- b1 * m + (1 - b1) * delta;  x <- x + eta * m / (sqrt(v) + tau)

As in the paper, m starts at 0 and v at tau^2, and there is no bias correction (Flower's FedAdam
adds one; fl follows the paper). The state (m, v, step) is checkpointed.

As a part of the strategy it runs after the aggregator: a trainable tensor that did not travel
as a change (FlexLoRA's A and B) has a zero pseudo-gradient here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fl.config import Config
from fl.strategies.aggregate import check_same_keys
from fl.strategies.base import Part, ServerStep, State

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad")


@dataclass
class ServerOptimizer(Part):
    name = "opt"
    kind: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9  # FedAvgM's beta
    betas: tuple[float, float] = (0.9, 0.99)
    tau: float = 1e-3
    m: State = field(default_factory=dict)
    v: State = field(default_factory=dict)
    steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"server_optimizer={self.kind!r} is not valid; choose one of {', '.join(SERVER_OPTIMIZERS)}"
            )

    @classmethod
    def from_config(cls, config: Config) -> ServerOptimizer:
        c = config
        return cls(c.server_optimizer, c.server_lr, c.server_momentum, c.server_beta_pair(), c.server_tau)

    def server_step(self, step: ServerStep) -> None:
        assert step.delta is not None, "the aggregator runs before the server optimizer"
        delta = {k: step.delta[k] if k in step.delta else torch.zeros_like(v) for k, v in step.global_state.items()}
        step.new = self.step(step.global_state, delta)

    def step(self, x: State, delta: State) -> State:
        """The next global state from the current one and the pseudo-gradient (both fp32)."""
        check_same_keys(x, delta)
        self.steps += 1
        if self.kind == "sgd":  # lr 1 (FedAvg) adds the mean change as it is: x + 1.0 * d == x + d exactly
            return {k: x[k] + self.lr * delta[k] for k in x}
        if self.kind == "momentum":
            for k, d in delta.items():
                self.m[k] = self.momentum * self.m[k] + d if k in self.m else d.clone()
            return {k: x[k] + self.lr * self.m[k] for k in x}
        b1, b2 = self.betas
        out = {}
        for k, d in delta.items():
            m = self.m.get(k, torch.zeros_like(d))
            v = self.v.get(k, torch.full_like(d, self.tau**2))
            m = b1 * m + (1 - b1) * d
            d2 = d * d
            if self.kind == "adagrad":
                v = v + d2
            elif self.kind == "adam":
                v = b2 * v + (1 - b2) * d2
            else:  # yogi
                v = v - (1 - b2) * d2 * torch.sign(v - d2)
            self.m[k], self.v[k] = m, v
            out[k] = x[k] + self.lr * m / (v.sqrt() + self.tau)
        return out

    def state(self) -> tuple[State, dict]:
        """(tensors, JSON-able extras) for a checkpoint."""
        tensors = {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}}
        return tensors, {"steps": self.steps}

    def load_state(self, tensors: State, extra: dict, device: torch.device) -> None:
        self.m = {k[2:]: v.to(device) for k, v in tensors.items() if k.startswith("m.")}
        self.v = {k[2:]: v.to(device) for k, v in tensors.items() if k.startswith("v.")}
        self.steps = int(extra.get("steps", 0))
