"""Client runners: how a rank trains the clients it hosts in one round. No collectives: the round
moves what these yield.

`SequentialRunner` trains a rank's sampled clients one after another on one copy of the model
(memory grows with the trainable state, not with model copies). For each client it builds the
start state (the strategy's `client_start`), trains with the task's loss and the strategy's client
terms, forms the update (trained - start), checks it (NaN / Inf, `max_update_norm`) before
anything leaves the rank, and collects what the strategy's parts send beside it. It yields one
`ClientUpdate` at a time, so a rank never holds more than one client's update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fl import models
from fl.faults import Faults
from fl.strategies.base import ClientContext, ClientUpdate, RoundPlan, State, update_problem
from fl.strategies.strategy import Strategy
from fl.train import LocalSchedule, client_seed, train_local


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

    @property
    def clients(self) -> list[int]:
        """The clients this rank hosts."""
        return sorted(self.shards)

    def examples(self, plan: RoundPlan) -> int:
        """Examples this rank trains on in one epoch of the round."""
        return sum(len(self.shards[c]) for c in plan.clients if c in self.shards)

    def train(
        self, plan: RoundPlan, global_state: State, on_step: Callable[[int], None] | None = None
    ) -> Iterator[ClientUpdate]:
        """Each of this rank's sampled clients, trained from the global state, in client order."""
        for c in plan.clients:
            if c in self.shards:
                yield self.train_one(c, plan, global_state, on_step)

    def train_one(
        self, c: int, plan: RoundPlan, global_state: State, on_step: Callable[[int], None] | None
    ) -> ClientUpdate:
        """Client c's local training from the global state; its update and what goes with it."""
        start = self.strategy.client_start(c, global_state)
        models.set_trainable_state(self.model, start)
        ctx = ClientContext(c, plan, start, client_seed(self.seed, plan.round, c), self.schedule.batch_size,
                            self.eval_batch_size, self.device)  # fmt: skip
        res = train_local(
            self.model, self.task, self.shards[c], self.schedule.at(plan.lr), seed=ctx.seed, device=self.device,
            terms=self.strategy.client_terms(ctx), params=models.trainable_parameters(self.model), on_step=on_step,
        )  # fmt: skip
        end = models.snapshot(models.get_trainable_state(self.model))
        delta = {k: end[k].float() - start[k].float() for k in end}
        if self.faults.poisons(c, plan.round):  # test-only: this client sends garbage
            delta = {k: torch.full_like(v, float("nan")) for k, v in delta.items()}
        reject, norm = update_problem(delta, self.max_update_norm)
        parts = {} if reject else self.strategy.client_finish(ctx, end, res, self.model)
        return ClientUpdate(c, res.num_examples, delta, res.loss_sum, res.examples_seen, reject, norm, parts)
