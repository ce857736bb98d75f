"""Federated algorithms as small parts: the strategy (client part, server part), pure aggregation
rules, server optimizers, client-side terms, and FedKDLoRA's teacher. Build one with `build_strategy`."""

from __future__ import annotations

from fl import privacy
from fl.config import Config
from fl.strategies.aggregate import State, Update, accumulate, finalize, weighted_average
from fl.strategies.lora_agg import LoraAggregator, parse_ranks
from fl.strategies.server_opt import ServerOptimizer
from fl.strategies.strategy import ClientUpdate, RoundPlan, Strategy, round_stats, update_problem

TRAINABLE = {"fedavg": "full", "fedlora": "lora", "fedkdlora": "lora"}  # the familiar scheme names


def build_strategy(cfg: Config) -> Strategy:
    """The strategy a config describes (the one place where algorithm keys are read)."""
    opt = ServerOptimizer(
        cfg.server_optimizer, cfg.server_lr, cfg.server_momentum, cfg.server_beta_pair(), cfg.server_tau
    )
    kd = cfg.scheme == "fedkdlora"
    lora = None
    if TRAINABLE[cfg.scheme] == "lora":
        ranks = parse_ranks(cfg.lora_ranks, cfg.num_clients, cfg.lora_r) if cfg.lora_ranks else None
        # under DP the products that measure the aggregation error would travel un-noised: they stay home
        lora = LoraAggregator(cfg.lora_aggregation, rank=cfg.lora_r, client_ranks=ranks,
                              measure_error=cfg.aggregation_error and not cfg.dp)  # fmt: skip
    dp = None
    if cfg.dp_clip is not None:
        rate = (cfg.clients_per_round or cfg.num_clients) / cfg.num_clients
        delta = cfg.dp_delta if cfg.dp_delta is not None else privacy.default_delta(cfg.num_clients)
        dp = privacy.PrivacySettings(cfg.dp_clip, cfg.dp_noise_multiplier, cfg.dp_noise_placement, rate,
                                     cfg.num_clients, delta, cfg.dp_target_epsilon)  # fmt: skip
    return Strategy(
        trainable=TRAINABLE[cfg.scheme],
        num_clients=cfg.num_clients,
        seed=cfg.seed,
        lr=cfg.lr,
        round_lr_decay=cfg.round_lr_decay,
        clients_per_round=cfg.clients_per_round,
        aggregation=cfg.aggregation,
        trim_ratio=cfg.trim_ratio,
        server_opt=opt,
        prox_mu=cfg.prox_mu,
        scaffold=cfg.scaffold,
        kd=kd,
        kd_on_clients=kd and cfg.kd_placement == "clients",
        kd_public_examples=cfg.kd_public_examples,
        lora=lora,
        dp=dp,
    )


__all__ = [
    "ClientUpdate", "RoundPlan", "ServerOptimizer", "State", "Strategy", "Update", "accumulate", "build_strategy",
    "finalize", "round_stats", "update_problem", "weighted_average",
]  # fmt: skip
