"""Federated schemes: pick one by name with `get_strategy`."""

from __future__ import annotations

from fl.config import Config
from fl.strategies.aggregate import Update, accumulate, finalize, weighted_average
from fl.strategies.base import Strategy
from fl.strategies.fedavg import FedAvg
from fl.strategies.fedkdlora import FedKDLoRA
from fl.strategies.fedlora import FedLoRA

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedlora": FedLoRA, "fedkdlora": FedKDLoRA}


def get_strategy(cfg: Config) -> Strategy:
    if cfg.scheme not in STRATEGIES:
        raise ValueError(f"scheme={cfg.scheme!r} is not valid; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[cfg.scheme](cfg)


__all__ = [
    "Strategy",
    "FedAvg",
    "FedLoRA",
    "FedKDLoRA",
    "Update",
    "accumulate",
    "finalize",
    "weighted_average",
    "get_strategy",
]
