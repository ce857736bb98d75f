"""The client-side parts of algorithms: what a strategy adds to a client's local training.

- FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): the local loss
  gains mu/2 * ||w - w_global||^2 over the trainable tensors. Its gradient, mu * (w - w_global),
  is added to each trainable tensor's gradient after backward (the same step, without a second
  graph over the parameters).
- SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
  Learning"): every local step is corrected by the control variates, y <- y - lr * (c - c_i),
  applied after the optimizer's own step so that it stays additive under AdamW (as OpenFedLLM
  does); then the client's control follows option II of the paper,
  c_i+ = c_i - c + (x - y) / (sum of the local step sizes), and it sends c_i+ - c_i. The server
  adds sum_i (c_i+ - c_i) / N to c (N: every client, sampled or not).

Everything is keyed like the trainable state; nothing here knows ranks or collectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl.strategies.aggregate import State


@dataclass
class LocalTerms:
    """Hooks `train_local` calls around each step; each is a no-op when its algorithm is off."""

    prox_mu: float = 0.0
    anchor: State | None = None  # the values the client started from (FedProx)
    correction: State | None = None  # c - c_i (SCAFFOLD)
    mask: State | None = None  # 1 where a tensor may change, 0 where it must stay (FlexLoRA's lower ranks)

    @property
    def active(self) -> bool:
        return (self.prox_mu > 0 and self.anchor is not None) or self.correction is not None or self.mask is not None

    @torch.no_grad()
    def after_backward(self, params: dict[str, torch.nn.Parameter]) -> None:
        """FedProx: grad += mu * (w - w_global); then the rank mask zeroes what must not change."""
        if self.prox_mu > 0 and self.anchor is not None:
            for k, p in params.items():
                if p.grad is not None:
                    p.grad.add_(p.detach() - self.anchor[k].to(p.device, p.dtype), alpha=self.prox_mu)
        if self.mask is not None:
            for k, m in self.mask.items():
                if params[k].grad is not None:
                    params[k].grad.mul_(m.to(params[k].grad.device))

    @torch.no_grad()
    def after_step(self, params: dict[str, torch.nn.Parameter], lr: float) -> None:
        """SCAFFOLD: y <- y - lr * (c - c_i)."""
        if self.correction is None:
            return
        for k, p in params.items():
            p.sub_(self.correction[k].to(p.device, p.dtype), alpha=lr)


def prox_term(params: dict[str, torch.Tensor], anchor: State, mu: float) -> torch.Tensor:
    """mu/2 * ||w - w_global||^2: the FedProx loss term (for reporting and for tests)."""
    total = sum(((p.float() - anchor[k].float()) ** 2).sum() for k, p in params.items())
    return 0.5 * mu * total  # type: ignore[return-value]


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
