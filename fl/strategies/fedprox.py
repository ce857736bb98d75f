"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

The local loss gains mu/2 * ||w - w_global||^2 over the trainable tensors. Its gradient,
mu * (w - w_global), is added to each trainable tensor's gradient after backward (the same step,
without a second graph over the parameters). Nothing travels and nothing is kept across rounds.
"""

from __future__ import annotations

import torch
from torch import nn

from fl.strategies.base import ClientContext, ClientTerm, Part, State


class ProxTerm(ClientTerm):
    """grad += mu * (w - w_start), on the trainable tensors keyed like the trainable state."""

    def __init__(self, mu: float, anchor: State):
        self.mu, self.anchor = mu, anchor

    @torch.no_grad()
    def after_backward(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            if p.grad is not None:
                p.grad.add_(p.detach() - self.anchor[k].to(p.device, p.dtype), alpha=self.mu)


class FedProx(Part):
    name = "prox"

    def __init__(self, mu: float):
        if mu <= 0:
            raise ValueError(f"prox_mu={mu} must be positive for FedProx")
        self.mu = mu

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        return [ProxTerm(self.mu, ctx.start)]
