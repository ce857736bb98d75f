"""Federated algorithms as parts of one strategy (`fl.strategies.base.Part`): aggregators (mean,
robust, DP-FedAvg), server optimizers, FedProx, SCAFFOLD, FedDyn, the LoRA aggregation modes.
FedKDLoRA's distillation is a part too, in `fl.kd`. Build a strategy with `build_strategy`."""

from __future__ import annotations

from fl.config import Config
from fl.strategies.aggregate import Aggregator, MeanAggregation, RobustAggregation
from fl.strategies.base import ClientUpdate, Part, RoundPlan, State, update_problem
from fl.strategies.compression import Compression
from fl.strategies.feddyn import FedDyn
from fl.strategies.fedprox import FedProx
from fl.strategies.lora_agg import LoraAggregator
from fl.strategies.privacy import PrivacySettings, PrivateAggregation
from fl.strategies.scaffold import Scaffold
from fl.strategies.server_opt import ServerOptimizer
from fl.strategies.strategy import Strategy, round_stats

LORA_SCHEMES = ("fedlora", "fedkdlora")  # schemes whose clients train LoRA adapters


def build_aggregator(cfg: Config) -> Aggregator:
    if cfg.dp:
        return PrivateAggregation(PrivacySettings.from_config(cfg), cfg.seed)
    if cfg.aggregation != "mean":
        return RobustAggregation(cfg.aggregation, cfg.trim_ratio)
    return MeanAggregation()


def build_parts(cfg: Config) -> list[Part]:
    """The parts a config describes, in the strategy's order (the one place where algorithm keys are read)."""
    parts: list[Part] = [build_aggregator(cfg), ServerOptimizer.from_config(cfg)]
    if cfg.prox_mu > 0:
        parts.append(FedProx(cfg.prox_mu))
    if cfg.scheme in LORA_SCHEMES:
        parts.append(LoraAggregator.from_config(cfg))
    if cfg.scaffold:
        parts.append(Scaffold(cfg.num_clients))
    if cfg.feddyn_alpha > 0:
        parts.append(FedDyn.from_config(cfg))
    if cfg.update_compression != "none":
        parts.append(Compression.from_config(cfg))
    return parts


def build_strategy(cfg: Config, extra: list[Part] | None = None) -> Strategy:
    """The strategy of a config; `extra` parts (FedKDLoRA's distillation) come last."""
    return Strategy(
        build_parts(cfg) + (extra or []),
        num_clients=cfg.num_clients,
        seed=cfg.seed,
        lr=cfg.lr,
        round_lr_decay=cfg.round_lr_decay,
        clients_per_round=cfg.clients_per_round,
    )


__all__ = [
    "Aggregator", "ClientUpdate", "LoraAggregator", "Part", "RoundPlan", "ServerOptimizer", "State", "Strategy",
    "build_parts", "build_strategy", "round_stats", "update_problem",
]  # fmt: skip
