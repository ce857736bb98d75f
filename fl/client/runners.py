"""Client runners: how a rank trains the clients it hosts in one round. No collectives: the round
moves what these yield.

`SequentialRunner` trains a rank's sampled clients one after another on one copy of the model
(memory grows with the trainable state, not with model copies). For each client it builds the
start state (the strategy's `client_start`), trains with the task's loss and the strategy's client
terms, forms the update (trained - start), checks it (NaN / Inf, `max_update_norm`) before
anything leaves the rank, and collects what the strategy's parts send beside it. It yields one
`ClientUpdate` at a time, so a rank never holds more than one client's update.

`DataParallelRunner` is the same for clients of several ranks (`ranks_per_client=k`): the k ranks
of a client train it together under DistributedDataParallel over the client's group, each on every
k-th row of each batch, so that they take the steps one rank would take on the whole batch. Every
rank of the group ends with the same update; the leader's travels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fl import comm, models
from fl.client import batched
from fl.client.train import LocalSchedule, client_seed, train_local
from fl.config import Config
from fl.faults import Faults
from fl.strategies.base import ClientContext, ClientUpdate, RoundPlan, State, TrainResult, update_problem
from fl.strategies.strategy import Strategy


class SequentialRunner:
    """Trains this rank's clients one after another (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        task: Any,
        strategy: Strategy,
        shards: dict[int, Any],
        schedule: LocalSchedule,
        *,
        device: torch.device,
        seed: int,
        eval_batch_size: int,
        max_update_norm: float | None = None,
        faults: Faults | None = None,
    ):
        self.model, self.task, self.strategy, self.shards, self.schedule = model, task, strategy, shards, schedule
        self.device, self.seed, self.eval_batch_size = device, seed, eval_batch_size
        self.max_update_norm, self.faults = max_update_norm, faults or Faults()
        self.trained = 0  # examples this rank trained on in the current round (its share of its clients')

    @property
    def clients(self) -> list[int]:
        """The clients this rank hosts."""
        return sorted(self.shards)

    def examples(self, plan: RoundPlan) -> int:
        """Rows this rank trains on in the round (every epoch, up to max_local_steps batches a client)."""
        return sum(self.schedule.examples_for(len(self.shards[c])) for c in plan.clients if c in self.shards)

    def train(
        self, plan: RoundPlan, global_state: State, on_step: Callable[[int], None] | None = None
    ) -> Iterator[ClientUpdate]:
        """Each of this rank's sampled clients, trained from the global state, in client order."""
        self.trained = 0
        for c in plan.clients:
            if c in self.shards:
                yield self.train_one(c, plan, global_state, on_step)

    def train_one(
        self, c: int, plan: RoundPlan, global_state: State, on_step: Callable[[int], None] | None
    ) -> ClientUpdate:
        """Client c's local training from the global state; its update and what goes with it."""
        start = self.strategy.client_start(c, global_state)
        models.set_trainable_state(self.model, start)
        ctx = ClientContext(
            c,
            plan,
            start,
            client_seed(self.seed, plan.round, c),
            self.schedule.batch_size,
            self.eval_batch_size,
            self.device,
            self.shard,
        )
        res = self.train_local(ctx, on_step)
        self.trained += res.examples_seen
        res = self.client_totals(res)
        return self.finish_client(ctx, start, models.snapshot(models.get_trainable_state(self.model)), res)

    def finish_client(self, ctx: ClientContext, start: State, end: State, res: TrainResult) -> ClientUpdate:
        """A trained client's update (end - start), checked (NaN / Inf, `max_update_norm`) before
        anything leaves the rank, and what the strategy's parts send beside it."""
        delta = {k: end[k].float() - start[k].float() for k in end}
        if self.faults.poisons(ctx.client, ctx.plan.round):  # test-only: this client sends garbage
            delta = {k: torch.full_like(v, float("nan")) for k, v in delta.items()}
        reject, norm = update_problem(delta, self.max_update_norm)
        parts = {} if reject else self.strategy.client_finish(ctx, end, res, self.model)
        return ClientUpdate(ctx.client, res.num_examples, delta, res.loss_sum, res.examples_seen, reject, norm, parts)

    shard = (0, 1)  # this rank's place among its client's ranks, and their number
    wrapped = None  # the model under DistributedDataParallel, for clients of several ranks

    def train_local(self, ctx: ClientContext, on_step: Callable[[int], None] | None) -> TrainResult:
        return train_local(
            self.model,
            self.task,
            self.shards[ctx.client],
            self.schedule.at(ctx.plan.lr),
            seed=ctx.seed,
            device=self.device,
            terms=self.strategy.client_terms(ctx),
            params=models.trainable_parameters(self.model),
            on_step=on_step,
            shard=self.shard,
            wrapped=self.wrapped,
        )

    def client_totals(self, res: TrainResult) -> TrainResult:
        """The client's training statistics (one rank: this rank's)."""
        return res


class DataParallelRunner(SequentialRunner):
    """A client of several ranks (see the module docstring); `rt` holds this rank's client group."""

    def __init__(self, *args: Any, rt: comm.Runtime, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rt = rt
        self.shard = (rt.group_rank, rt.group_size)
        self.wrapped = comm.data_parallel(rt, self.model)  # built once: DDP's buckets hold the trainable tensors

    def client_totals(self, res: TrainResult) -> TrainResult:
        """The loss and the examples summed over the client's ranks (each holds its share)."""
        loss_sum, seen = comm.group_sum(self.rt, [res.loss_sum, float(res.examples_seen)])
        return dataclasses.replace(res, loss_sum=loss_sum, examples_seen=int(round(seen)))


class BatchedRunner(SequentialRunner):
    """Up to K of a rank's sampled clients of a round in one forward pass (`parallel_clients=K`,
    `fl.client.batched`): each step takes one batch from each of the K clients, the frozen base runs once
    over all of them, and the loss is the sum of the clients' own mean losses. Each client keeps
    its own data order, seed, schedule, AdamW state and client terms; a client whose shard is used
    up pads its block (weight 0) and stops stepping. The updates equal sequential training's up to
    float rounding (dropout draws differ: use lora_dropout=0 to compare)."""

    def __init__(self, *args: Any, parallel: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.parallel = parallel

    def train(self, plan: RoundPlan, global_state: State, on_step: Callable[[int], None] | None = None):
        self.trained = 0
        mine = [c for c in plan.clients if c in self.shards]
        for i in range(0, len(mine), self.parallel):
            yield from self.train_together(mine[i : i + self.parallel], plan, global_state, on_step)

    def train_together(self, clients: list[int], plan: RoundPlan, global_state: State, on_step) -> Iterator:
        starts = [self.strategy.client_start(c, global_state) for c in clients]
        seeds = [client_seed(self.seed, plan.round, c) for c in clients]
        ctxs = [
            ClientContext(c, plan, s, seed, self.schedule.batch_size, self.eval_batch_size, self.device)
            for c, s, seed in zip(clients, starts, seeds, strict=True)
        ]
        terms = [self.strategy.client_terms(ctx) for ctx in ctxs]
        with batched.stack(self.model, starts) as stacked:
            results = batched.train_together(self, ctxs, terms, stacked, on_step)
            ends = batched.client_states(stacked, len(clients))
        for ctx, start, end, res in zip(ctxs, starts, ends, results, strict=True):
            self.trained += res.examples_seen
            models.set_trainable_state(self.model, end)  # client c's model, for what its parts compute from it
            yield self.finish_client(ctx, start, end, res)


def build_runner(cfg: Config, rt: comm.Runtime, model: Any, task: Any, strategy: Strategy, shards: dict[int, Any]):
    """The runner this rank's clients need: a client of several ranks (`ranks_per_client`), K clients
    at once (`parallel_clients`), or one after another; with the config's schedule and test-only faults."""
    kind: type = SequentialRunner
    extra: dict[str, Any] = {}
    if rt.group_size > 1:
        kind, extra = DataParallelRunner, {"rt": rt}
    elif cfg.parallel_clients > 1:
        kind, extra = BatchedRunner, {"parallel": cfg.parallel_clients}
    faults = Faults.parse(cfg.fault_inject)
    faults.in_setup(rt.rank)  # test-only: this process may die here, before a client's group forms
    return kind(
        model,
        task,
        strategy,
        shards,
        LocalSchedule.from_config(cfg, rt.world_size),
        device=rt.device,
        seed=cfg.seed,
        eval_batch_size=cfg.eval_batch_size,
        max_update_norm=cfg.max_update_norm,
        faults=faults,
        **extra,
    )
