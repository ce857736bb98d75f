"""Set-up of one run: data, shards, model and strategy on every rank; the teacher and a restored
checkpoint on rank 0. Built identically (same seeds) on every rank, and before anything is written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl import models
from fl.checkpoint import load_checkpoint, split_prefix
from fl.comm import Runtime
from fl.config import Config, ConfigError
from fl.data import TaskData, load_task
from fl.partition import partition, public_split
from fl.strategies import Strategy, build_strategy
from fl.strategies.aggregate import State
from fl.strategies.distill import TeacherServer

SETUP_LIMIT_S = 120.0  # data-dependent set-up loops (partitioning) must finish within this


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """A watchdog: raise ConfigError if the block runs longer than `seconds` (main thread only;
    elsewhere the block runs unguarded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise ConfigError(f"{what} did not finish in {seconds:g} s; check the settings that drive it")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Setup:
    """Everything a rank needs before round 1."""

    rt: Runtime
    strategy: Strategy
    task: TaskData
    shards: list[list[int]]  # client id -> indices into task.train
    public_size: int
    model: torch.nn.Module
    tokenizer: Any
    model_path: str
    my_clients: list[int]  # clients this rank trains
    teacher: TeacherServer | None = None  # rank 0, FedKDLoRA
    resumed_from: str | None = None


def owner(client: int, world_size: int) -> int:
    """Round-robin: client c lives on client rank 1 + c % (world - 1); on rank 0 in simulation."""
    return 0 if world_size == 1 else 1 + client % (world_size - 1)


def owners(num_clients: int, world_size: int) -> dict[int, int]:
    return {c: owner(c, world_size) for c in range(num_clients)}


def clients_of_rank(rank: int, world_size: int, num_clients: int) -> list[int]:
    return [c for c in range(num_clients) if owner(c, world_size) == rank]


def eval_rows(rank: int, world_size: int, num_rows: int) -> list[int]:
    """Test rows this rank scores: every (world-1)-th row from rank-1 on client ranks, all in simulation."""
    if world_size == 1:
        return list(range(num_rows))
    if rank == 0:
        return []
    return list(range(rank - 1, num_rows, world_size - 1))


def snapshot(state: State) -> State:
    """A detached copy (trainable-state dicts hold views of live parameters)."""
    return {k: v.detach().clone() for k, v in state.items()}


def prepare(cfg: Config, rt: Runtime) -> Setup:
    """Load data, split it, build the model (and, on rank 0, the teacher). Raises ConfigError
    before anything is written."""
    if rt.world_size - 1 > cfg.num_clients:
        raise ConfigError(
            f"torchrun started {rt.world_size - 1} client ranks for num_clients={cfg.num_clients}; "
            f"launch with --nproc_per_node={cfg.num_clients + 1} or fewer, or raise num_clients"
        )
    strategy = build_strategy(cfg)
    check_privacy_budget(strategy)
    task = load_task(cfg)
    public, private = public_split(len(task.train), cfg.teacher_data_pct)
    private_labels = [task.train.labels[i] for i in private]
    try:
        with time_limit(SETUP_LIMIT_S, f"partition={cfg.partition} of {len(private_labels)} rows"):
            local = partition(private_labels, cfg.num_clients, cfg.partition, cfg.seed, cfg.dirichlet_alpha)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shards = [[private.start + i for i in shard] for shard in local]
    freeze_a = cfg.lora_aggregation == "ffa"
    spec = models.ModelSpec.from_config(cfg, lora=strategy.trainable == "lora", freeze_a=freeze_a)
    model, tokenizer, path = models.build_model(spec, task.num_labels)
    models.check_max_length(model, cfg.max_length)
    model.to(rt.device)
    if strategy.lora is not None:  # adapted modules, scale, FFA's shared A, FedEx's base weights
        strategy.lora.from_model(model, models.get_trainable_state(model))
    teacher = None
    if rt.is_main and strategy.kd:
        teacher = TeacherServer.load(cfg, task, len(public), tokenizer, rt.device)
    mine = clients_of_rank(rt.rank, rt.world_size, cfg.num_clients)
    return Setup(rt, strategy, task, shards, len(public), model, tokenizer, path, mine, teacher)


def check_privacy_budget(strategy: Strategy) -> None:
    """A target epsilon that one round already exceeds leaves nothing to run."""
    dp = strategy.dp
    if dp is None or dp.target_epsilon is None:
        return
    from fl.privacy import Accountant

    first = Accountant(dp.noise_multiplier, dp.rate).epsilon(dp.delta, 1)
    if first > dp.target_epsilon:
        raise ConfigError(
            f"dp_target_epsilon={dp.target_epsilon} is spent before round 1 (one round costs epsilon {first:.3f} at "
            f"dp_noise_multiplier={dp.noise_multiplier}, sampling rate {dp.rate:g}); raise the target or the noise"
        )


def restore(cfg: Config, s: Setup, path: Path | None) -> tuple[int, list[dict[str, Any]]]:
    """Rank 0: load checkpoint `path` into the model, the strategy and the teacher, every tensor
    onto this rank's device. Returns (first round to run, records so far); (1, []) for a fresh start."""
    if path is None:
        return 1, []
    tensors, meta = load_checkpoint(path, cfg)
    device = s.rt.device
    if int(meta["round"]) >= cfg.rounds:
        raise ConfigError(
            f"checkpoint {str(path)!r} has finished round {meta['round']} and rounds={cfg.rounds}; "
            f"raise rounds to continue, or start a new run"
        )
    try:
        models.set_trainable_state(s.model, {k: v.to(device) for k, v in split_prefix(tensors, "global").items()})
        extra = meta.get("server", {})
        s.strategy.load_state(split_prefix(tensors, "server"), extra.get("strategy", {}), device)
        clients = split_prefix(tensors, "client")
        for c in range(cfg.num_clients):
            mine = {k: v.to(device) for k, v in split_prefix(clients, str(c)).items()}
            if mine:
                s.strategy.client_controls[c] = mine
        if s.teacher is not None:
            s.teacher.load_state(split_prefix(tensors, "kd"), extra.get("teacher", {}))
    except ValueError as err:
        raise ConfigError(f"checkpoint {str(path)!r} does not fit this model ({err}); resume with its model") from None
    s.resumed_from = str(path)
    return int(meta["round"]) + 1, list(meta["records"])
