"""FedProx (Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks") written
outside fl, as a client-side loss term: each client's local loss gains mu/2 * ||w - w_global||^2
over the tensors that train, where w_global is what the client started the round from.

The built-in `prox_mu` adds the term's gradient after backward instead (no second graph); this
version adds the term to the loss itself, as the paper writes it, so the round's `train_loss`
includes it. `tests/test_extension.py` checks that both give the same test metrics.

    parts: [{_component_: docs.examples.fedprox.FedProx, mu: 0.01}]
"""

from __future__ import annotations

import torch
from torch import nn

import fl
from fl.models import trainable_parameters
from fl.strategies.base import ClientContext, State


class ProxLoss(fl.ClientTerm):
    """loss + mu/2 * sum_k ||w_k - anchor_k||^2 over the trainable tensors."""

    def __init__(self, mu: float, anchor: State):
        self.mu, self.anchor = mu, anchor

    def loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        params = trainable_parameters(model)
        prox = sum(((p - self.anchor[k].to(p.device, p.dtype)) ** 2).sum() for k, p in params.items())
        return loss + 0.5 * self.mu * prox


class FedProx(fl.Part):
    name = "user_prox"

    def __init__(self, mu: float = 0.01):
        if mu <= 0:
            raise ValueError(f"mu={mu} must be positive")
        self.mu = mu

    def client_terms(self, ctx: ClientContext) -> list[fl.ClientTerm]:
        return [ProxLoss(self.mu, ctx.start)]
