"""Federated algorithms as parts of one strategy (`fl.strategies.base.Part`): aggregators (mean,
robust, DP-FedAvg), server optimizers, FedProx, SCAFFOLD, FedDyn, the LoRA aggregation modes,
compressed transport; FedKDLoRA's distillation is a part too, in `fl.kd`.

The flat config keys (`prox_mu=0.1`, `aggregation=median`, ...) name built-in parts through one
table (`builtin_parts`), and every part, fl's or a user's, is built by `fl.config.components.instantiate`
from the same kind of spec. Build a strategy with `build_strategy`. May import config, models (the
model spec), `fl.comm.message` and `fl.comm.codecs` (what travels, and how it is compressed); never
the collectives, tasks or the client runners: parts are pure functions over named tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fl.config import Config
from fl.config.components import instantiate
from fl.errors import ConfigError
from fl.models import ModelSpec
from fl.strategies.aggregate import Aggregator, MeanAggregation, RobustAggregation
from fl.strategies.base import ClientTerm, ClientUpdate, Part, RoundPlan, SetupContext, State, update_problem
from fl.strategies.compression import Compression
from fl.strategies.feddyn import FedDyn
from fl.strategies.fedprox import FedProx
from fl.strategies.lora_agg import LoraAggregator
from fl.strategies.privacy import PrivacySettings, PrivateAggregation
from fl.strategies.scaffold import Scaffold
from fl.strategies.server_opt import ServerOptimizer
from fl.strategies.strategy import Strategy, round_stats

LORA_SCHEMES = ("fedlora", "fedkdlora")  # schemes whose clients train LoRA adapters


def builtin_parts(cfg: Config) -> list[dict[str, Any]]:
    """The built-in parts the flat keys describe, as component specs, in the strategy's order:
    aggregator -> server optimizer -> FedProx -> LoRA mode -> SCAFFOLD -> FedDyn -> codec -> KD."""
    table: list[tuple[bool, str, dict[str, Any]]] = [
        (cfg.dp, "dp", {}),
        (not cfg.dp and cfg.aggregation == "mean", "mean", {}),
        (not cfg.dp and cfg.aggregation == "median", "median", {}),
        (not cfg.dp and cfg.aggregation == "trimmed_mean", "trimmed_mean", {"trim_ratio": cfg.trim_ratio}),
        (True, "server_optimizer", {}),
        (cfg.prox_mu > 0, "fedprox", {"mu": cfg.prox_mu}),
        (cfg.scheme in LORA_SCHEMES, "lora", {}),
        (cfg.scaffold, "scaffold", {}),
        (cfg.feddyn_alpha > 0, "feddyn", {}),
        (cfg.update_compression != "none", "compression", {}),
        (cfg.scheme == "fedkdlora", "distillation", {}),
    ]
    return [{"_component_": name, **kwargs} for on, name, kwargs in table if on]


def build_parts(cfg: Config, extra: Sequence[Part] = ()) -> list[Part]:
    """Every part of a run: the built-in ones of the flat keys, then the config's `parts`, then `extra`
    (objects from `fl.run(parts=...)`). A user part that is an `Aggregator` replaces the mean."""
    parts = [instantiate(spec, spec["_component_"], Part, config=cfg) for spec in builtin_parts(cfg)]
    user = [instantiate(spec, f"parts[{i}]", Part, config=cfg) for i, spec in enumerate(cfg.parts)]
    extra = [extra] if isinstance(extra, Part) else list(extra)
    for i, p in enumerate(extra):
        if not isinstance(p, Part):
            raise ConfigError(f"parts[{i}] of fl.run is a {type(p).__name__}, not an fl.Part; subclass fl.Part")
    user += list(extra)
    for p in user:
        if isinstance(p, Aggregator):
            replace_mean(cfg, parts, p)
    parts += [p for p in user if not isinstance(p, Aggregator)]
    check_parts(parts)
    return parts


def replace_mean(cfg: Config, parts: list[Part], aggregator: Aggregator) -> None:
    """A user's aggregator in the mean's place: refused where another aggregator is named, or where a
    part of the config assumes the example-weighted mean (fedex / flex fold the mean of the products,
    FedDyn replaces the mean's server step)."""
    if type(parts[0]) is not MeanAggregation:
        named = type(parts[0]).__name__
        raise ConfigError(
            f"part {type(aggregator).__name__} is an aggregator and {named} is one already (aggregation="
            f"{cfg.aggregation}, dp_clip={cfg.dp_clip}, or an earlier part); keep one aggregator"
        )
    if cfg.lora_aggregation in ("fedex", "flex") or cfg.feddyn_alpha > 0:
        raise ConfigError(
            f"part {type(aggregator).__name__} replaces the mean, which lora_aggregation={cfg.lora_aggregation} / "
            f"feddyn_alpha={cfg.feddyn_alpha} assume; use lora_aggregation=fedit|ffa and feddyn_alpha=0 with it"
        )
    parts[0] = aggregator


def check_parts(parts: list[Part]) -> None:
    """Names that can prefix state (unique, no '.'), and no part that sees individual updates under DP."""
    names = [p.name for p in parts]
    bad = [n for n in names if not n or "." in n]
    if bad:
        raise ConfigError(f"a part's name must be a non-empty word without '.', got {bad[0]!r}; set the class's name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two parts share the name {twice[0]!r} (it prefixes their checkpointed state); rename one")
    if parts[0].private and any(p.gathers for p in parts):
        gatherer = next(type(p).__name__ for p in parts if p.gathers)
        raise ConfigError(
            f"dp_clip with {gatherer}, which gathers every client's own update: rank 0 would see updates "
            "before the noise is complete; drop one of the two"
        )


def build_strategy(cfg: Config, extra: Sequence[Part] = ()) -> Strategy:
    """The strategy of a config, with the user's parts (`extra`) last."""
    return Strategy(
        build_parts(cfg, extra),
        num_clients=cfg.num_clients,
        seed=cfg.seed,
        lr=cfg.lr,
        round_lr_decay=cfg.round_lr_decay,
        clients_per_round=cfg.clients_per_round,
    )


def model_spec(cfg: Config) -> ModelSpec:
    """How the scheme builds its model: LoRA-wrapped for fedlora / fedkdlora (FFA: A frozen), whole for fedavg."""
    lora = cfg.scheme in LORA_SCHEMES
    return ModelSpec.from_config(cfg, lora=lora, freeze_a=lora and cfg.lora_aggregation == "ffa")


__all__ = [
    "Aggregator",
    "ClientTerm",
    "ClientUpdate",
    "Compression",
    "FedDyn",
    "FedProx",
    "LoraAggregator",
    "MeanAggregation",
    "Part",
    "PrivacySettings",
    "PrivateAggregation",
    "RobustAggregation",
    "RoundPlan",
    "Scaffold",
    "ServerOptimizer",
    "SetupContext",
    "State",
    "Strategy",
    "build_parts",
    "build_strategy",
    "model_spec",
    "round_stats",
    "update_problem",
]
