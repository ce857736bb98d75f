"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization"), written as
one part: the worked example of a stateful algorithm in docs/architecture.md.

Client k of round t minimises L_k(theta) - <g_k, theta> + alpha/2 * ||theta - theta^{t-1}||^2, where
g_k is its own state (the gradient of L_k at its previous solution, 0 at first): the term's gradient
alpha * (theta - theta^{t-1}) - g_k is added after backward. After training,
g_k <- g_k - alpha * (theta_k - theta^{t-1}) stays on the client's rank (checkpointed).

The server keeps h (0 at first): h <- h - alpha * (|P| / m) * mean_k(theta_k - theta^{t-1}) over the
round's accepted clients P of m, and theta^t = theta^{t-1} + mean_k(theta_k - theta^{t-1}) - h / alpha.
The paper averages uniformly; fl uses the aggregator's example-weighted mean (the same on equal
shards). It replaces the server optimizer's step, so it needs `server_optimizer=sgd server_lr=1`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fl.config import Config
from fl.errors import ConfigError
from fl.strategies.base import ClientContext, ClientTerm, Part, ServerStep, State, TrainResult


class DynamicTerm(ClientTerm):
    """grad += alpha * (w - theta_start) - g_k."""

    def __init__(self, alpha: float, anchor: State, grad_state: State | None):
        self.alpha, self.anchor, self.grad_state = alpha, anchor, grad_state

    @torch.no_grad()
    def after_backward(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            if p.grad is None:
                continue
            p.grad.add_(p.detach() - self.anchor[k].to(p.device, p.dtype), alpha=self.alpha)
            if self.grad_state is not None:
                p.grad.sub_(self.grad_state[k].to(p.device, p.dtype))


class FedDyn(Part):
    name = "dyn"

    def __init__(self, alpha: float, num_clients: int):
        self.alpha, self.num_clients = alpha, num_clients
        self.h: State = {}  # on rank 0
        self.grad_states: dict[int, State] = {}  # g_k, on the client's rank

    @classmethod
    def from_config(cls, config: Config) -> FedDyn:
        if config.feddyn_alpha <= 0:
            raise ConfigError("feddyn needs feddyn_alpha > 0 (its regulariser's weight), e.g. feddyn_alpha=0.01")
        plain = config.server_optimizer == "sgd" and config.server_lr == 1.0 and config.aggregation == "mean"
        if not plain or config.dp or config.scaffold:
            raise ConfigError(
                "feddyn_alpha replaces the server step: use it with aggregation=mean, server_optimizer=sgd "
                "server_lr=1, and without dp_clip or scaffold"
            )
        return cls(config.feddyn_alpha, config.num_clients)

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        return [DynamicTerm(self.alpha, ctx.start, self.grad_states.get(ctx.client))]

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: nn.Module) -> dict[str, State]:
        old = self.grad_states.get(ctx.client)
        self.grad_states[ctx.client] = {
            k: (old[k] if old is not None else torch.zeros_like(v, dtype=torch.float32))
            - self.alpha * (v.float() - ctx.start[k].float())
            for k, v in end.items()
        }
        return {}  # nothing travels beyond the change itself

    def server_step(self, step: ServerStep) -> None:
        assert step.delta is not None and step.new is not None
        share = step.sums.scalars["accepted"] / self.num_clients
        for k, d in step.delta.items():
            self.h[k] = self.h.get(k, torch.zeros_like(d)) - self.alpha * share * d
        step.new = {k: v - self.h[k] / self.alpha if k in self.h else v for k, v in step.new.items()}

    def state(self) -> tuple[State, dict[str, Any]]:
        return dict(self.h), {}

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        self.h = {k: v.to(device) for k, v in tensors.items()}

    def client_state_like(self, global_state: State) -> State | None:
        return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}

    def client_state(self, client: int) -> State | None:
        return self.grad_states.get(client)

    def load_client_state(self, client: int, state: State) -> None:
        self.grad_states[client] = state
