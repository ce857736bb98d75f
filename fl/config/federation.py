"""The `federation` section of the config. The federation and its algorithms: the scheme, clients and
rounds, sampling, the server optimizer, FedProx / SCAFFOLD / FedDyn, robust aggregation, what
travels, and your own parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.components import validate
from fl.config.fields import config_field as _f
from fl.errors import ConfigError

SCHEMES = ("fedavg", "fedlora", "fedkdlora")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad")
AGGREGATIONS = ("mean", "median", "trimmed_mean")


@dataclass
class FederationSection:
    """The federation and its algorithms: the scheme, clients and rounds, sampling, the server
    optimizer, FedProx / SCAFFOLD / FedDyn, robust aggregation, what travels, and your own parts.
    """

    SECTION = "federation"

    scheme: str = _f("fedlora", "fedavg: full fine-tuning; fedlora: LoRA + head; fedkdlora: LoRA + a teacher", SCHEMES)
    num_clients: int = _f(4, "number of federated clients (virtual clients share client ranks)", lo=1, hi=100_000)
    clients_per_round: int | None = _f(
        None, "clients sampled each round (seeded, the same on every rank); unset: every client", lo=1, hi=100_000
    )
    rounds: int = _f(3, "federated rounds", lo=1, hi=100_000, resumable=True)
    seed: int = _f(42, "seed for partitions, initialisation, sampling, shuffling and dropout", lo=0, hi=2**31 - 1)
    server_optimizer: str = _f(
        "sgd",
        "on the pseudo-gradient (Reddi et al. 2021): sgd (server_lr=1: FedAvg), momentum (FedAvgM), "
        "adam, yogi, adagrad",
        SERVER_OPTIMIZERS,
    )
    server_lr: float = _f(1.0, "server learning rate", lo=0, hi=1000, open_lo=True)
    server_momentum: float = _f(0.9, "server_optimizer=momentum: FedAvgM's beta", lo=0, hi=1, open_hi=True)
    server_betas: str = _f("0.9,0.99", "server_optimizer=adam|yogi|adagrad: beta1,beta2 (adagrad uses beta1)")
    server_tau: float = _f(1e-3, "server_optimizer=adam|yogi|adagrad: adaptivity tau", lo=0, hi=1e3, open_lo=True)
    prox_mu: float = _f(0.0, "FedProx (Li et al. 2020): weight mu of mu/2 * ||w - w_global||^2; 0: off", lo=0, hi=1e6)
    scaffold: bool = _f(False, "SCAFFOLD (Karimireddy et al. 2020): control variates on the trainable tensors")
    feddyn_alpha: float = _f(
        0.0, "FedDyn (Acar et al. 2021): weight alpha of the dynamic regulariser; 0: off", lo=0, hi=1e6
    )
    aggregation: str = _f(
        "mean",
        "mean (example-weighted); median / trimmed_mean (coordinate-wise, Yin et al. 2018) gather every sampled "
        "client's update on rank 0: bytes up = one update per client instead of one per client rank",
        AGGREGATIONS,
    )
    trim_ratio: float = _f(
        0.1, "aggregation=trimmed_mean: share cut from each end per coordinate", lo=0, hi=0.5, open_hi=True
    )
    max_update_norm: float | None = _f(
        None,
        "reject a client update whose L2 distance from the global state exceeds this (unset: off)",
        lo=0,
        hi=1e30,
        open_lo=True,
    )
    update_compression: str = _f(
        "none",
        "what travels up (each client's update) and down (the global state's change): none (fp32), bf16, int8 "
        "(QSGD: per-block scale, stochastic rounding), topk (largest topk_ratio of each tensor, error feedback)",
        ("none", "bf16", "int8", "topk"),
    )
    topk_ratio: float = _f(
        0.1, "update_compression=topk: the share of each tensor's values that travels", lo=0, hi=1, open_lo=True
    )
    parts: list = _f(
        [],
        "algorithm parts after the built-in ones, e.g. [{_component_: my_algos.Krum, f: 1}]; a part that is an "
        "fl Aggregator replaces the mean",
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        self.server_beta_pair()
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}; "
                "sample at most every client"
            )
        for i, spec in enumerate(self.parts):  # built later, on every rank, in set-up
            validate(spec, f"parts[{i}]", "fl.strategies.base:Part")

    def server_beta_pair(self) -> tuple[float, float]:
        """server_betas as (beta1, beta2), each in [0, 1)."""
        try:
            b1, b2 = (float(x) for x in self.server_betas.split(","))
        except ValueError:
            raise ConfigError(f"server_betas={self.server_betas!r} must be two numbers, e.g. 0.9,0.99") from None
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"server_betas={self.server_betas!r}: each beta must be in [0, 1)")
        return b1, b2
