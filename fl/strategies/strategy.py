"""The strategy: an aggregator and the parts that make up one federated algorithm, composed in order.

FedAvg and FedLoRA are one strategy (what trains is the model's business); every algorithm is a
`Part` (`fl.strategies.base`) and the strategy calls each hook on every part, in order:

    aggregator (mean | robust | DP) -> server optimizer -> FedProx -> LoRA mode -> SCAFFOLD -> ... -> KD

The order is the order of the server step (the aggregator's pseudo-gradient, the server optimizer's
step, then the stateful parts) and of the client terms (FedProx's pull before FlexLoRA's mask).

What travels, by name (`fl.comm.message.Message`):
  up:   delta/<tensor> (sum_i w_i * (theta_i - global)), the parts' own (control/, products/,
        logits/), scalars weight, accepted, c<i>.examples|loss_sum|seen|reject|norm per sampled client
  down: global/<tensor>, the parts' own (control/, base/, teacher/)
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl.comm.message import Message
from fl.strategies.aggregate import Aggregator
from fl.strategies.base import (
    REJECT_REASONS,
    ByteCount,
    ClientContext,
    ClientTerm,
    ClientUpdate,
    Part,
    RoundPlan,
    ServerStep,
    SetupContext,
    State,
    TrainResult,
)


def sample_clients(num_clients: int, per_round: int | None, seed: int, round_idx: int) -> tuple[int, ...]:
    """Seeded uniform sampling without replacement; every client when per_round is unset."""
    if per_round is None or per_round >= num_clients:
        return tuple(range(num_clients))
    rng = random.Random(seed * 1_000_003 + round_idx * 7_919 + 17)
    return tuple(sorted(rng.sample(range(num_clients), per_round)))


class Strategy:
    """The parts of one run's algorithm; `parts[0]` is the aggregator."""

    def __init__(
        self,
        parts: list[Part],
        num_clients: int,
        seed: int,
        lr: float,
        round_lr_decay: float = 1.0,
        clients_per_round: int | None = None,
    ):
        if not parts or not isinstance(parts[0], Aggregator):
            raise ValueError("a strategy starts with its aggregator")
        if sum(p.encodes_wire for p in parts) > 1:
            raise ValueError("at most one part may encode what travels (encodes_wire)")
        self.parts, self.aggregator = parts, parts[0]
        self.num_clients, self.seed, self.lr, self.round_lr_decay = num_clients, seed, lr, round_lr_decay
        self.clients_per_round = clients_per_round

    def part(self, kind: type) -> Any:
        """The part of this kind, or None."""
        return next((p for p in self.parts if isinstance(p, kind)), None)

    # ---- what the parts declare -----------------------------------------------------------------
    @property
    def gathers(self) -> bool:
        """Rank 0 needs every client's own upload (a robust aggregator, the LoRA aggregation error)."""
        return any(p.gathers for p in self.parts)

    @property
    def needs_server_model(self) -> bool:
        return any(p.needs_server_model for p in self.parts)

    @property
    def needs_public_rows(self) -> bool:
        return any(p.needs_public_rows for p in self.parts)

    @property
    def codec(self) -> Any:
        """The part that encodes what travels (`encodes_wire`), or None: at most one may."""
        return next((p for p in self.parts if p.encodes_wire), None)

    def setup(self, ctx: SetupContext) -> None:
        for p in self.parts:
            p.setup(ctx)

    # ---- plan and down --------------------------------------------------------------------------
    def plan_round(self, round_idx: int) -> RoundPlan:
        """The same on every rank: the sampled clients, the round's learning rate, the parts' extras."""
        clients = sample_clients(self.num_clients, self.clients_per_round, self.seed, round_idx)
        plan = RoundPlan(round_idx, clients, self.lr * self.round_lr_decay ** (round_idx - 1))
        for p in self.parts:
            stop, plan = plan.stop, p.plan(plan)
            if stop is not None and plan.stop is None:  # a later part cannot drop an earlier one's stop (DP's)
                plan = dataclasses.replace(plan, stop=stop)
        return plan

    def downlink(self, global_state: State, next_round: int, record: dict[str, Any]) -> Message:
        """What rank 0 sends after each aggregation (and before round 1)."""
        parts = {"global": global_state}
        for p in self.parts:
            parts.update(p.down(global_state, next_round, record))
        return Message(parts)

    def read_downlink(self, msg: Message) -> State:
        """The global state (a copy); every part keeps its own."""
        for p in self.parts:
            p.read_down(msg.parts)
        return {k: v.clone() for k, v in msg.parts["global"].items()}

    def load_into(self, model: nn.Module) -> None:
        for p in self.parts:
            p.load_into(model)

    # ---- the client -----------------------------------------------------------------------------
    def client_start(self, client: int, global_state: State) -> State:
        state = global_state
        for p in self.parts:
            state = p.client_start(client, state)
        return state

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        return [t for p in self.parts for t in p.client_terms(ctx)]

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: nn.Module) -> dict[str, State]:
        out: dict[str, State] = {}
        for p in self.parts:
            out.update(p.client_finish(ctx, end, result, model))
        return out

    def upload_template(self, global_state: State, plan: RoundPlan) -> Message:
        """Zeros with every name the round's upload carries (the same on every rank)."""
        withheld = set().union(*(p.withheld(global_state) for p in self.parts))
        delta = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items() if k not in withheld}
        parts = {"delta": delta}
        for p in self.parts:
            parts.update(p.upload(global_state, plan))
        scalars = {"weight": 0.0, "accepted": 0.0}
        for c in plan.clients:
            scalars.update({f"c{c}.{k}": 0.0 for k in ("examples", "loss_sum", "seen", "reject", "norm")})
        return Message(parts, scalars)

    def client_message(self, template: Message, u: ClientUpdate, plan: RoundPlan) -> Message:
        return self.aggregator.client_message(template, u, plan)

    # ---- the server -----------------------------------------------------------------------------
    def has_update(self, sums: Message) -> bool:
        """Whether the server step runs: some update was accepted, or the aggregator releases every round."""
        return sums.scalars["accepted"] > 0 or self.aggregator.releases_every_round

    def server_step(
        self, global_state: State, sums: Message, individual: dict[int, Message] | None, plan: RoundPlan, load: Any
    ) -> tuple[State, dict[str, Any]]:
        """(next global state, record entries): every part's server step, in order."""
        step = ServerStep(plan, global_state, sums, individual, load, weighted=self.aggregator.weighted)
        for p in self.parts:
            p.server_step(step)
        assert step.new is not None, "a strategy needs a server optimizer"
        if step.retrained:
            for p in self.parts:
                step.new = p.canonical(step.new)
        return step.new, step.record

    def evaluate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.parts:
            out.update(p.evaluate())
        return out

    # ---- state ----------------------------------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        """Every part's state across rounds, prefixed by its name."""
        tensors: State = {}
        extra: dict[str, Any] = {}
        for p in self.parts:
            t, e = p.state()
            tensors.update({f"{p.name}.{k}": v for k, v in t.items()})
            if e:
                extra[p.name] = e
        return tensors, extra

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        for p in self.parts:
            mine = {k[len(p.name) + 1 :]: v for k, v in tensors.items() if k.startswith(p.name + ".")}
            p.load_state(mine, extra.get(p.name, {}), device)

    def client_state_like(self, global_state: State) -> Message | None:
        """Zeros of every per-client state, one part per part name; None when no part keeps one."""
        parts = {p.name: like for p in self.parts if (like := p.client_state_like(global_state)) is not None}
        return Message(parts) if parts else None

    def client_state(self, client: int, like: Message) -> Message:
        """Client c's state (zeros where a part has none yet for it)."""
        parts = {}
        for p in self.parts:
            if p.name in like.parts:
                parts[p.name] = p.client_state(client) or {k: v.clone() for k, v in like.parts[p.name].items()}
        return Message(parts)

    def load_client_state(self, client: int, msg: Message) -> None:
        for p in self.parts:
            if p.name in msg.parts:
                p.load_client_state(client, msg.parts[p.name])

    # ---- bytes and the final model --------------------------------------------------------------
    def byte_counts(self, plan: RoundPlan, global_state: State, client_ranks: int) -> dict[str, int]:
        """What a deployment would move: one message per sampled client each way (its update up; the
        global state and what the parts send down). Keys every record carries start at 0."""
        plain = sum(v.numel() for v in global_state.values()) * 4
        state = {c: plain for c in plan.clients}
        counts = ByteCount(state, dict(state), dict(state), {"bytes_logits": 0, "bytes_products": 0}, client_ranks)
        for p in self.parts:
            p.add_bytes(counts, plan, global_state)
        return {"bytes_up": sum(counts.up.values()), "bytes_down": sum(counts.down.values()), **counts.extra}

    def export(self, run_dir: Path, model: nn.Module, tokenizer: Any, default: str) -> tuple[nn.Module, str]:
        """The final model and its folder name (`default`, unless a part changes how it is saved); every
        part writes what it keeps beside it, last part first (FedEx's merge, early in the order, comes
        after the KD teacher has named the student's base)."""
        chosen = None
        for p in reversed(self.parts):
            got = p.export(run_dir, model, tokenizer)
            chosen = chosen or got
        return chosen or (model, default)


def round_stats(sums: Message, plan: RoundPlan, private: bool = False) -> dict:
    """The round's record entries that come from the clients' scalars (under DP, per-client
    statistics stay on their ranks: only acceptance is known)."""
    s = sums.scalars
    accepted = [c for c in plan.clients if not round(s[f"c{c}.reject"])]
    loss = sum(s[f"c{c}.loss_sum"] for c in accepted)  # the clients whose updates count
    seen = sum(s[f"c{c}.seen"] for c in accepted)
    rejected = {}
    for c in plan.clients:
        code = int(round(s[f"c{c}.reject"]))
        if code:
            norm = s[f"c{c}.norm"]
            rejected[str(c)] = REJECT_REASONS[code] + (f" ({norm:.4g})" if code == 2 else "")
    return {
        "train_loss": loss / seen if seen else None,
        "num_examples": None if private else int(sum(s[f"c{c}.examples"] for c in accepted)),
        "accepted_clients": len(accepted),
        "examples_trained": None if private else int(sum(s[f"c{c}.seen"] for c in plan.clients)),
        "sampled_clients": list(plan.clients),
        "rejected_clients": rejected,
        "client_train_loss": {
            str(c): s[f"c{c}.loss_sum"] / s[f"c{c}.seen"] for c in plan.clients if s[f"c{c}.seen"] > 0
        },
    }
