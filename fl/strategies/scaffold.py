"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning"), option II.

Every local step is corrected by the control variates, y <- y - lr * (c - c_i), applied after the
optimizer's own step so that it stays additive under AdamW (as OpenFedLLM does); then the client's
control becomes c_i+ = c_i - c + (x - y) / (sum of the local step sizes), and it sends c_i+ - c_i.
The server adds sum_i (c_i+ - c_i) / N to c (N: every client, sampled or not).

What it keeps: the server's c (sent down every round, checkpointed) and each client's c_i (on the
client's rank; gathered into checkpoints, scattered back on resume). Bytes double each way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fl.config import Config
from fl.strategies.base import (
    ByteCount,
    ClientContext,
    ClientTerm,
    Part,
    RoundPlan,
    ServerStep,
    State,
    TrainResult,
    zeros_like_state,
)


def scaffold_correction(server_control: State, client_control: State | None) -> State:
    """c - c_i (c_i is zero for a client that has not trained yet)."""
    if client_control is None:
        return {k: v.clone() for k, v in server_control.items()}
    return {k: v - client_control[k].to(v.device) for k, v in server_control.items()}


def scaffold_client_update(
    client_control: State | None, server_control: State, start: State, end: State, lr_sum: float
) -> tuple[State, State]:
    """Option II: (c_i+, c_i+ - c_i) with c_i+ = c_i - c + (x - y) / lr_sum."""
    if lr_sum <= 0:
        raise ValueError("SCAFFOLD needs at least one local step with a positive learning rate")
    new, change = {}, {}
    for k, c in server_control.items():
        ci = client_control[k].to(c.device) if client_control is not None else torch.zeros_like(c)
        new[k] = ci - c + (start[k].float() - end[k].float()) / lr_sum
        change[k] = new[k] - ci
    return new, change


def scaffold_server_update(server_control: State, change_sum: State, num_clients: int) -> State:
    """c <- c + sum_i (c_i+ - c_i) / N."""
    return {k: v + change_sum[k] / num_clients for k, v in server_control.items()}


class CorrectionTerm(ClientTerm):
    """y <- y - lr * (c - c_i) after each optimizer step."""

    def __init__(self, correction: State):
        self.correction = correction

    @torch.no_grad()
    def after_step(self, params: dict[str, nn.Parameter], lr: float) -> None:
        for k, p in params.items():
            p.sub_(self.correction[k].to(p.device, p.dtype), alpha=lr)


class Scaffold(Part):
    name = "control"

    @classmethod
    def from_config(cls, config: Config) -> Scaffold:
        return cls(config.num_clients)

    def __init__(self, num_clients: int):
        self.num_clients = num_clients
        self.control: State = {}  # c, on every rank (from the downlink)
        self.client_controls: dict[int, State] = {}  # c_i, on the client's rank

    def down(self, global_state: State, next_round: int, record: dict[str, Any]) -> dict[str, State]:
        return {"control": self.control or {k: torch.zeros_like(v) for k, v in global_state.items()}}

    def read_down(self, parts: dict[str, State]) -> None:
        self.control = {k: v.clone() for k, v in parts["control"].items()}

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        return [CorrectionTerm(scaffold_correction(self.control, self.client_controls.get(ctx.client)))]

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: nn.Module) -> dict[str, State]:
        old = self.client_controls.get(ctx.client)
        new, change = scaffold_client_update(old, self.control, ctx.start, end, result.lr_sum)
        self.client_controls[ctx.client] = new
        return {"control": change}

    def upload(self, global_state: State, plan: RoundPlan) -> dict[str, State]:
        return {"control": zeros_like_state(global_state)}

    def server_step(self, step: ServerStep) -> None:
        self.control = scaffold_server_update(self.control, step.sums.parts["control"], self.num_clients)

    def state(self) -> tuple[State, dict[str, Any]]:
        return dict(self.control), {}

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        self.control = {k: v.to(device) for k, v in tensors.items()}

    def client_state_like(self, global_state: State) -> State | None:
        return {k: torch.zeros_like(v) for k, v in global_state.items()}

    def client_state(self, client: int) -> State | None:
        return self.client_controls.get(client)

    def load_client_state(self, client: int, state: State) -> None:
        self.client_controls[client] = state

    def add_bytes(self, counts: ByteCount, plan: RoundPlan, global_state: State) -> None:
        for c in plan.clients:  # c travels down and each c_i change up, the size of the state
            counts.up[c] += counts.state[c]
            counts.down[c] += counts.state[c]
