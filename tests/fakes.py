"""The round's fast seam: a fake task and a fake client runner that drive the real `Federation`
(plan, collect, the strategy's server step, send down, evaluate, callbacks, checkpoints, results)
in this process in milliseconds, on a 6-weight model. Each client's update is a known tensor, so
what the round computes is checked against arithmetic written out in the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fl import comm
from fl.comm.message import Message
from fl.comm.placement import Placement
from fl.config import Config
from fl.faults import Faults
from fl.output.callbacks import CallbackList
from fl.server import Federation
from fl.setup import Setup
from fl.strategies import SetupContext, build_strategy
from fl.strategies.base import ClientUpdate, RoundPlan, update_problem


class FakeTask:
    """Scores a model by the mean of its weights ("loss") and the share of positive weights."""

    columns = ("test_accuracy",)
    notes: dict[str, Any] = {}

    def __init__(self, rows: int = 40):
        self.train, self.test = list(range(rows)), list(range(8))

    def partition_labels(self, rows: Any) -> None:
        return None

    def eval_template(self, device: torch.device) -> Message:
        return Message({"eval": {"weights": torch.zeros(2, device=device)}}, {"eval.n": 0.0})

    def eval_sums(self, model: nn.Module, test: Any, batch_size: int, device: torch.device) -> Message:
        w = torch.cat([p.detach().flatten() for p in model.parameters()])
        return Message(
            {"eval": {"weights": torch.stack([w.sum(), (w > 0).sum().float()])}}, {"eval.n": float(w.numel())}
        )

    def metrics(self, got: Message) -> dict[str, float]:
        total, positive = got.parts["eval"]["weights"].tolist()
        n = got.scalars["eval.n"]
        return {"loss": total / n, "accuracy": positive / n}


def client_delta(c: int, r: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Client c's update in round r: every weight moves by (c + 1) / 100 * (-1)^r."""
    return {k: torch.full_like(v, (c + 1) / 100 * (-1) ** r, dtype=torch.float32) for k, v in state.items()}


class FakeRunner:
    """Yields each sampled client's `client_delta` (weight: 10 * (c + 1) rows) as the real runners do:
    checked for NaN / Inf and `max_update_norm`; `poison` clients send NaN."""

    def __init__(self, cfg: Config, strategy: Any, poison: frozenset[int] = frozenset()):
        self.cfg, self.strategy, self.poison = cfg, strategy, poison
        self.clients, self.trained, self.faults = list(range(cfg.num_clients)), 0, Faults()

    def examples(self, plan: RoundPlan) -> int:
        return sum(10 * (c + 1) for c in plan.clients)

    def train(self, plan: RoundPlan, global_state: dict, on_step: Callable[[int], None] | None = None) -> Iterator:
        self.trained = 0
        for c in plan.clients:
            delta = client_delta(c, plan.round, global_state)
            if c in self.poison:
                delta = {k: torch.full_like(v, float("nan")) for k, v in delta.items()}
            reject, norm = update_problem(delta, self.cfg.max_update_norm)
            n = 10 * (c + 1)
            self.trained += n
            yield ClientUpdate(c, n, delta, loss_sum=float(c + 1) * n, seen=n, reject=reject, norm=norm)


def fake_setup(cfg: Config, poison: frozenset[int] = frozenset()) -> Setup:
    """A Setup of this process (the simulation) around the fakes and the config's real strategy."""
    torch.manual_seed(0)
    model, task, rt = nn.Linear(2, 2), FakeTask(), comm.Runtime()
    strategy = build_strategy(cfg)
    strategy.setup(SetupContext(cfg, task, model, None, rt.device, True, True, 0, None))
    shards = [list(range(c, 40, cfg.num_clients)) for c in range(cfg.num_clients)]
    runner = FakeRunner(cfg, strategy, poison)
    return Setup(rt, Placement(1, cfg.num_clients), task, strategy, runner, shards, 0, model, None, "fake", task.test)


def run_round_loop(
    cfg: Config,
    s: Setup | None = None,
    callbacks: list | None = None,
    first_round: int = 1,
    records: list | None = None,
) -> dict:
    """The real round loop over the fakes; the results document."""
    s = s or fake_setup(cfg)
    cbs = CallbackList(callbacks or [], cfg, cfg.run_dir)
    cbs.stops = bool(cbs)
    return Federation(cfg, s, first_round, records or [], cbs).run()  # type: ignore[return-value]
