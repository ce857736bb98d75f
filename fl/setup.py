"""Set-up of one run on every rank: the strategy with its parts, the task and its data, the
placement, the shards, the model, what each part declared it needs (`Part.setup`), the client
runner; and rank 0's restore of a checkpoint. Built identically (same seeds) on every rank, and
before anything is written; a model-free rank 0 loads neither model nor data and receives rank 1's
(`share_server_model`). Nothing here names an algorithm: parts declare what they need.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fl import comm, models
from fl.client.runners import SequentialRunner, build_runner
from fl.comm.placement import Placement
from fl.data.partition import split_clients
from fl.errors import ConfigError
from fl.strategies import Part, SetupContext, Strategy, build_strategy, model_spec
from fl.tasks import BenchmarkRounds, Task, build_task

if TYPE_CHECKING:  # annotations only
    from fl.comm import Runtime
    from fl.config import Config


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
    spec: models.ModelSpec | None = None  # how the model was built (a model-free rank 0 builds it to export)
    resumed_from: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # set-up phases, seconds
    benchmarks: BenchmarkRounds = field(default_factory=BenchmarkRounds)  # eval_benchmarks: this rank's items

    @property
    def faults(self) -> Any:
        """Test-only faults (`fl.faults`): the runner's."""
        return self.runner.faults

    def final_model(self, state: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, Any]:
        """(model, tokenizer) holding `state`, to export: a model-free rank 0 builds its model here, once
        the rounds are over (the only time it loads the base weights)."""
        if isinstance(self.model, models.ServerModel):
            # where from_pretrained puts it (the CPU; a 4-bit model on its GPU): it is only saved
            self.model, self.tokenizer, _ = self.task.build_model(self.spec)
            models.set_trainable_state(self.model, state)
        return self.model, self.tokenizer


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
    task = None if free else build_task(cfg, task)
    benchmarks = BenchmarkRounds.from_config(cfg, lambda n: placement.eval_rows(rt.rank, n))
    public_size, shards = split_clients(cfg, task) if task is not None else (0, [])
    clock.lap("data_s")
    model, tokenizer, path = build_model(cfg, rt, task, spec, free)
    clock.lap("model_s")
    mine = placement.clients_of(rt.rank)
    public_rows = range(public_size) if strategy.needs_public_rows else range(0)
    train = encode_rows(task, tokenizer, [*public_rows, *(i for c in mine for i in shards[c])]) if mine else None
    test_rows = placement.eval_rows(rt.rank, len(task.test)) if task is not None else []
    test = task.encode(tokenizer, task.test.subset(test_rows)) if test_rows else None  # only the rows it scores
    clock.lap("tokenize_s")
    if not free:
        public = train.subset(range(public_size)) if train is not None and len(public_rows) else None
        strategy.setup(
            SetupContext(cfg, task, model, tokenizer, rt.device, rt.is_main, bool(mine), public_size, public)
        )
    runner = build_runner(cfg, rt, model, task, strategy, {c: train.subset(shards[c]) for c in mine} if train else {})
    clock.lap("strategy_s")
    return Setup(
        rt,
        placement,
        task,
        strategy,
        runner,
        shards,
        public_size,
        model,
        tokenizer,
        path,
        test,
        spec=spec,
        timings=clock.laps,
        benchmarks=benchmarks,
    )


def build_model(cfg: Config, rt: Runtime, task: Task | None, spec: models.ModelSpec, free: bool) -> tuple:
    """(model on this rank's device, tokenizer, its path); a model-free rank 0 builds none (it only
    checks that the model it will export exists)."""
    if free:
        if cfg.save_model:
            models.resolve_model(spec.source)  # it builds the model to export it: a missing model fails now, not then
        return None, None, ""
    model, tokenizer, path = task.build_model(spec)  # type: ignore[union-attr]
    models.check_max_length(model, cfg.max_length)
    if not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit model is placed by its device_map
        model.to(rt.device)
    return model, tokenizer, path


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
