"""FedKDLoRA as a part of the strategy.

- plan: the round's public rows, a seeded sample of `kd_public_examples` (the same on every rank);
- kd_placement=clients: rank 0 sends the teacher's targets on the next round's public rows down
  with the global state; each client trains on (1 - alpha) * task loss(private batch)
  + alpha * T^2 * KL(teacher || student)(public batch) and sends its student logits on those rows
  up, weighted by its examples; public labels stay on rank 0;
- server step (both placements): the teacher distils with the aggregated student (server) or
  learns from the clients' ensemble (clients); with server placement the student after that step
  is the next global model;
- evaluation: the teacher's metrics; state: the teacher and its optimizer; bytes: the logits.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl import models
from fl.errors import ConfigError
from fl.kd.teacher import TeacherServer
from fl.models import ModelSpec
from fl.strategies.base import (
    ByteCount,
    ClientContext,
    ClientTerm,
    Part,
    RoundPlan,
    ServerStep,
    SetupContext,
    State,
    TrainResult,
)
from fl.tasks.order import cycle_batches


def public_rows(seed: int, round_idx: int, public_size: int, per_round: int | None) -> list[int]:
    """The round's public rows: a seeded sample, the same on every rank (indices into the slice)."""
    if per_round is None or per_round >= public_size:
        return list(range(public_size))
    return sorted(random.Random(seed * 7_919 + round_idx).sample(range(public_size), per_round))


def cycle_rows(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded batches of row positions 0..n-1, reshuffled at each pass."""
    return cycle_batches(n, batch_size, seed + 7919)


class DistillTerm(ClientTerm):
    """Each local step also takes the next batch of public rows: loss = (1 - a) * loss + a * T^2 * KL."""

    def __init__(self, task: Any, data: Any, targets: State, alpha: float, temperature: float, ctx: ClientContext):
        self.task, self.data, self.targets, self.alpha, self.temperature = task, data, targets, alpha, temperature
        self.device, self.shard = ctx.device, ctx.shard
        self.rows = cycle_rows(len(data), ctx.batch_size, ctx.seed)

    def loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        rows, (index, count) = next(self.rows), self.shard
        mine = rows[index::count] if count > 1 else rows  # a client of several ranks: each its share of the rows
        kl, _ = self.task.kd_kl(model, self.data, mine or rows[:1], self.targets, self.temperature, self.device)
        if count > 1:
            kl = kl * (len(mine) * count / len(rows))
        return (1.0 - self.alpha) * loss + self.alpha * kl


@dataclasses.dataclass
class Distillation(Part):
    """See the module docstring. Built from the config's scalars; `setup` adds, on every rank, the
    task, this rank's student (`model`), the public slice (`public`: the student's tokenization, on
    ranks that host clients) and, on rank 0, the teacher (`fl.kd.teacher.TeacherServer`)."""

    on_clients: bool
    per_round: int | None
    seed: int
    rounds: int
    alpha: float
    temperature: float
    task: Any = None
    model: nn.Module | None = None
    public_size: int = 0
    public: Any = None  # the public slice, student tokenization (client ranks; rank 0: the teacher's copy)
    teacher: TeacherServer | None = None
    cut: ModelSpec | None = None  # the student's base, when it is cut from the teacher (student_layers)
    train_here: bool = True  # whether this rank hosts clients (and so trains with KD)
    targets: State | None = None  # the teacher's targets of this round (every rank, from the downlink)
    config: Any = None  # the run's config: the teacher's settings (teacher_ckpt, distill_lr, ...)
    name = "kd"
    needs_server_model = True  # rank 0's student distils with the teacher

    def __post_init__(self) -> None:
        self.needs_public_rows = self.on_clients  # the teacher's targets are on public rows the clients encode

    @classmethod
    def from_config(cls, config: Any) -> Distillation:
        c = config
        if c.scheme != "fedkdlora" or not c.teacher_ckpt:
            raise ConfigError("the distillation part is FedKDLoRA's: use scheme=fedkdlora teacher_ckpt=<folder>")
        return cls(
            c.kd_placement == "clients",
            c.kd_public_examples,
            c.seed,
            c.rounds,
            c.kd_alpha,
            c.kd_temperature,
            config=config,
        )

    def setup(self, ctx: SetupContext) -> None:
        """The teacher on rank 0; the student's public rows on client ranks (rank 0's teacher copy in one process)."""
        cfg = ctx.config
        self.task, self.model, self.public_size, self.public = ctx.task, ctx.model, ctx.public_size, ctx.public
        if ctx.is_server:
            self.teacher = TeacherServer.load(cfg, ctx.task, ctx.public_size, ctx.tokenizer, ctx.device)
        if self.on_clients and self.public is None:  # the student's tokenization of the public slice
            self.public = self.teacher.public_s  # type: ignore[union-attr]
        self.cut = ModelSpec.from_config(cfg, lora=False) if cfg.student_layers else None
        self.train_here = ctx.hosts_clients

    def rows(self, round_idx: int) -> list[int]:
        return public_rows(self.seed, round_idx, self.public_size, self.per_round)

    def plan(self, plan: RoundPlan) -> RoundPlan:
        return dataclasses.replace(plan, extra={**plan.extra, "public_rows": tuple(self.rows(plan.round))})

    # ---- down and the clients -------------------------------------------------------------------
    def down(self, global_state: State, next_round: int, record: dict[str, Any]) -> dict[str, State]:
        if not self.on_clients or next_round > self.rounds:
            return {}
        rows, t0 = self.rows(next_round), time.perf_counter()
        device = next(iter(global_state.values())).device
        got = self.teacher.targets(rows) if self.teacher else self.task.kd_like(self.public.subset(rows), device)
        record["time_server_kd_s"] = record.get("time_server_kd_s", 0.0) + time.perf_counter() - t0
        return {"teacher": got}

    def read_down(self, parts: dict[str, State]) -> None:
        self.targets = parts.get("teacher")

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        if self.targets is None or not self.train_here:
            return []
        data = self.public.subset(ctx.plan.extra["public_rows"])
        return [DistillTerm(self.task, data, self.targets, self.alpha, self.temperature, ctx)]

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: nn.Module) -> dict[str, State]:
        if self.targets is None or not self.train_here:
            return {}
        data = self.public.subset(ctx.plan.extra["public_rows"])
        reply = self.task.kd_reply(model, data, self.targets, ctx.eval_batch_size, ctx.device)
        return {"logits": {"student": reply * float(result.num_examples)}}

    def upload(self, global_state: State, plan: RoundPlan) -> dict[str, State]:
        if not self.on_clients:
            return {}
        device = next(iter(global_state.values())).device
        data = self.public.subset(plan.extra["public_rows"])
        return {"logits": {"student": self.task.kd_reply_like(data, device)}}

    # ---- the server -----------------------------------------------------------------------------
    def server_step(self, step: ServerStep) -> None:
        if self.teacher is None or step.sums.scalars["accepted"] <= 0:
            return
        t0 = time.perf_counter()
        ensemble = None
        if "logits" in step.sums.parts:  # the clients' example-weighted mean reply, as the teacher's targets
            mean = step.sums.parts["logits"]["student"] / step.sums.scalars["weight"]
            ensemble = self.task.kd_as_targets(mean, self.targets)
        step.load(step.new)  # the aggregated student, in rank 0's model
        rows = list(step.plan.extra["public_rows"])
        step.record.update(self.teacher.after_aggregation(self.model, step.plan.round, rows, ensemble))
        step.new = models.snapshot(models.get_trainable_state(self.model))  # the student after KD
        step.retrained = True
        step.record["time_server_kd_s"] = step.record.get("time_server_kd_s", 0.0) + time.perf_counter() - t0

    def evaluate(self) -> dict[str, float]:
        return self.teacher.evaluate() if self.teacher is not None else {}

    # ---- state, bytes, the final model ----------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        return self.teacher.state() if self.teacher is not None else ({}, {})

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        if self.teacher is not None and tensors:
            self.teacher.load_state(tensors, extra)

    def add_bytes(self, counts: ByteCount, plan: RoundPlan, global_state: State) -> None:
        if not self.on_clients:
            return
        data, meta = self.public.subset(plan.extra["public_rows"]), torch.device("meta")
        down = sum(v.numel() for v in self.task.kd_like(data, meta).values()) * 4
        up = self.task.kd_reply_like(data, meta).numel() * 4
        for c in plan.clients:  # the teacher's targets down, the student's reply up
            counts.up[c] += up
            counts.down[c] += down
        counts.extra["bytes_logits"] = (up + down) * len(plan.clients)

    def export(self, run_dir: Path, model: nn.Module, tokenizer: Any) -> tuple[nn.Module, str] | None:
        if self.teacher is not None:  # the teacher beside the student (and the student's base, when cut)
            self.teacher.save(run_dir, model, tokenizer, self.cut)
        return None
