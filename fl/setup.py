"""Set-up of one run on every rank: the strategy with its parts, the task and its data, the
placement, the shards, the model, what each part declared it needs (`Part.setup`), the client
runner; and rank 0's restore of a checkpoint. Built identically (same seeds) on every rank, and
before anything is written; a model-free rank 0 loads neither model nor data and receives rank 1's
(`share_server_model`). Nothing here names an algorithm: parts declare what they need.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fl import comm, models
from fl.checkpoint import load_checkpoint, unpack_state
from fl.client import BatchedRunner, DataParallelRunner, SequentialRunner
from fl.comm import Runtime
from fl.config import Config, ConfigError
from fl.faults import Faults
from fl.message import Message
from fl.partition import natural, partition, public_split
from fl.placement import Placement
from fl.strategies import Part, SetupContext, Strategy, build_strategy, model_spec
from fl.tasks import Task, build_task
from fl.train import LocalSchedule

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
    placement: Placement
    task: Task
    strategy: Strategy
    runner: SequentialRunner  # or DataParallelRunner, for clients of several ranks
    shards: list[list[int]]  # client id -> indices into task.train
    public_size: int
    model: torch.nn.Module
    tokenizer: Any
    model_path: str
    test: Any  # this rank's encoded test rows, or None
    faults: Faults
    spec: models.ModelSpec | None = None  # how the model was built (a model-free rank 0 builds it to export)
    resumed_from: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # set-up phases, seconds

    def final_model(self, state: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, Any]:
        """(model, tokenizer) holding `state`, to export: a model-free rank 0 builds its model here, once
        the rounds are over (the only time it loads the base weights)."""
        if isinstance(self.model, models.ServerModel):
            # where from_pretrained puts it (the CPU; a 4-bit model on its GPU): it is only saved
            self.model, self.tokenizer, _ = self.task.build_model(self.spec)
            models.set_trainable_state(self.model, state)
        return self.model, self.tokenizer


def split_clients(cfg: Config, task: Task) -> tuple[int, list[list[int]]]:
    """(public slice size, client -> train indices): the public slice first, the rest partitioned."""
    public, private = public_split(len(task.train), cfg.public_pct)
    labels = task.partition_labels(private)
    if labels is None and cfg.partition == "dirichlet":
        raise ConfigError("partition=dirichlet splits by label and this task has none; use contiguous or iid")
    groups = task.partition_groups(private) if cfg.partition == "natural" else None
    if cfg.partition == "natural" and groups is None:
        raise ConfigError(
            "partition=natural needs rows with groups (task=shakespeare: the play); use contiguous or iid"
        )
    try:
        with time_limit(SETUP_LIMIT_S, f"partition={cfg.partition} of {len(private)} rows"):
            if groups is not None:
                local = natural(groups, cfg.num_clients)
            else:
                local = partition(labels or [0] * len(private), cfg.num_clients, cfg.partition, cfg.seed,
                                  cfg.dirichlet_alpha)  # fmt: skip
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return len(public), [[private.start + i for i in shard] for shard in local]


def prepare(cfg: Config, rt: Runtime, parts: Sequence[Part] = (), task: Task | None = None) -> Setup:
    """Build the strategy (fl's parts of the config, then the user's `parts`), load data, split it,
    build the model, give every part what it declared it needs (`Part.setup`), build the runner. A
    model-free rank 0 builds only its strategy and runner, and gets task, shards and model from rank 1
    (`share_server_model`). Raises ConfigError before anything is written. `Setup.timings` says
    where the time went."""
    clock = Clock()
    placement = Placement(rt.world_size, cfg.num_clients, cfg.ranks_per_client)
    try:
        placement.check()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    strategy = build_strategy(cfg, parts)
    spec = model_spec(cfg)
    free = rt.is_main and model_free_server(rt, spec, strategy)  # task, shards, model: from rank 1
    if not free:
        task = build_task(cfg, task)
        public_size, shards = split_clients(cfg, task)
    else:
        task, public_size, shards = None, 0, []
    clock.lap("data_s")
    model, tokenizer, path = None, None, ""
    if free and cfg.save_model:
        models.resolve_model(spec.source)  # it builds the model to export it: a missing model fails now, not then
    if not free:
        model, tokenizer, path = task.build_model(spec)  # type: ignore[union-attr]
        models.check_max_length(model, cfg.max_length)
        if not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit model is placed by its device_map
            model.to(rt.device)
    clock.lap("model_s")
    mine = placement.clients_of(rt.rank)
    public_rows = range(public_size) if strategy.needs_public_rows else range(0)
    train = encode_rows(task, tokenizer, [*public_rows, *(i for c in mine for i in shards[c])]) if mine else None
    test_rows = placement.eval_rows(rt.rank, len(task.test)) if task is not None else []
    test = task.encode(tokenizer, task.test.subset(test_rows)) if test_rows else None  # only the rows it scores
    clock.lap("tokenize_s")
    if not free:
        public = train.subset(range(public_size)) if train is not None and len(public_rows) else None
        ctx = SetupContext(cfg, task, model, tokenizer, rt.device, rt.is_main, bool(mine), public_size, public)
        strategy.setup(ctx)
    faults = Faults.parse(cfg.fault_inject)
    faults.in_setup(rt.rank)  # test-only: this process may die here
    kind, extra_args = (SequentialRunner, {})
    if rt.group_size > 1:
        kind, extra_args = DataParallelRunner, {"rt": rt}
    elif cfg.parallel_clients > 1:
        kind, extra_args = BatchedRunner, {"parallel": cfg.parallel_clients}
    runner = kind(
        model, task, strategy, {c: train.subset(shards[c]) for c in mine} if train else {},
        LocalSchedule.from_config(cfg, rt.world_size), device=rt.device, seed=cfg.seed,
        eval_batch_size=cfg.eval_batch_size, max_update_norm=cfg.max_update_norm, faults=faults, **extra_args,
    )  # fmt: skip
    clock.lap("strategy_s")
    return Setup(rt, placement, task, strategy, runner, shards, public_size, model, tokenizer, path, test, faults,  # type: ignore[arg-type]
                 spec=spec, timings=clock.laps)  # fmt: skip


def model_free_server(rt: Runtime, spec: models.ModelSpec, strategy: Strategy) -> bool:
    """Whether rank 0 of this job aggregates without a model or data: a torchrun job's rank 0 trains
    and scores nothing, and when only an adapter trains and no part needs the model on the server
    (`Part.needs_server_model`) it needs only the adapter's state and the data's sizes. Every rank
    decides alike."""
    return rt.distributed and rt.world_size > 1 and spec.adapter is not None and not strategy.needs_server_model


def share_server_model(cfg: Config, s: Setup) -> None:
    """Rank 1's first trainable state, parameter counts, model path and adapter layout, and its task
    without rows, shards and public size, to a model-free rank 0 (a collective of every rank, after
    set-up agreed: every rank built the same from the same seeds); its parts then set up on that
    (`setup_server_parts`).
    Tensors travel on the CPU and land on rank 0's device; the adapter is small (MiniLM r8: 0.3 MB;
    a 7B model's r16 q/v adapter: ~30 MB)."""
    if not model_free_server(s.rt, s.spec, s.strategy):  # type: ignore[arg-type]
        return
    facts = None
    if s.rt.rank == 1:
        layout = models.adapter_layout(s.model)
        facts = {
            "state": {k: v.detach().cpu() for k, v in models.get_trainable_state(s.model).items()},
            "counts": models.count_parameters(s.model),
            "path": s.model_path,
            "layout": ({k: v.detach().cpu() for k, v in layout[0].items()}, layout[1]) if layout else None,
            "task": s.task.without_rows(),  # ~5 bytes a train row (its label), like the shards' indices
            "shards": s.shards,
            "public_size": s.public_size,
        }
    facts = comm.broadcast_object(s.rt, facts, src=1)
    if not s.rt.is_main:
        return
    dev = s.rt.device
    state = {k: v.to(dev) for k, v in facts["state"].items()}  # type: ignore[index]
    layout = facts["layout"]  # type: ignore[index]
    layout = ({k: v.to(dev) for k, v in layout[0].items()}, layout[1]) if layout else None
    s.model, s.model_path = models.ServerModel(state, *facts["counts"], layout=layout), facts["path"]  # type: ignore[index]
    s.task, s.shards, s.public_size = facts["task"], facts["shards"], facts["public_size"]  # type: ignore[index]


def setup_server_parts(cfg: Config, s: Setup) -> None:
    """A model-free rank 0's parts set up on what rank 1 sent (`share_server_model`); in set-up's
    agreement, so a part's ConfigError there stops every rank with one line."""
    if s.rt.is_main and model_free_server(s.rt, s.spec, s.strategy):  # type: ignore[arg-type]
        s.strategy.setup(SetupContext(cfg, s.task, s.model, None, s.rt.device, True, False, s.public_size))


class Clock:
    """Seconds between laps, by name."""

    def __init__(self) -> None:
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.t
        self.t = now


class Rows:
    """Encoded rows of train addressed by their train index (a rank tokenizes only the rows it needs)."""

    def __init__(self, encoded: Any, index: list[int]):
        self.encoded, self.at = encoded, {i: j for j, i in enumerate(index)}

    def subset(self, rows: Any) -> Any:
        return self.encoded.subset([self.at[i] for i in rows])


def encode_rows(task: Task, tokenizer: Any, rows: list[int]) -> Rows:
    """The train rows this rank trains on (and KD's public rows), tokenized once (the `Dataset.map`
    cache serves the same selection in a later run)."""
    index = sorted(set(rows))
    return Rows(task.encode(tokenizer, task.train.subset(index)), index)


def restore(cfg: Config, s: Setup, path: Path | None) -> tuple[int, list[dict[str, Any]]]:
    """Rank 0: load checkpoint `path` into the model and the strategy's parts (every client's own
    state too), every tensor onto this rank's device. Returns (first round to run, records so
    far); (1, []) for a fresh start."""
    if path is None:
        return 1, []
    tensors, meta = load_checkpoint(path, cfg)
    device = s.rt.device
    if int(meta["round"]) >= cfg.rounds:
        raise ConfigError(
            f"checkpoint {str(path)!r} has finished round {meta['round']} and rounds={cfg.rounds}; "
            f"raise rounds to continue, or start a new run"
        )
    names = [p.name for p in s.strategy.parts]
    if meta.get("part_names", names) != names:
        raise ConfigError(
            f"checkpoint {str(path)!r} was written by the parts {meta['part_names']}, this run has {names}; "
            "resume with the same parts"
        )
    global_state, server, clients = unpack_state(tensors)
    try:
        models.set_trainable_state(s.model, {k: v.to(device) for k, v in global_state.items()})
        s.strategy.load_state(server, meta.get("parts", {}), device)
        for c, parts in sorted(clients.items()):
            moved = {p: {k: v.to(device) for k, v in t.items()} for p, t in parts.items()}
            s.strategy.load_client_state(c, Message(moved))
    except ValueError as err:
        raise ConfigError(f"checkpoint {str(path)!r} does not fit this model ({err}); resume with its model") from None
    s.resumed_from = str(path)
    return int(meta["round"]) + 1, list(meta["records"])
