"""Exact and heterogeneous-rank LoRA aggregation, as pure functions over name-keyed tensors.

A LoRA module m adds scale * B_m @ A_m to its frozen weight W0_m (A: [r, d_in], B: [d_out, r]).
Averaging A and B separately (FedIT, today's FedLoRA) applies mean(B_i) @ mean(A_i), which is not
the mean of the clients' updates, mean(B_i @ A_i). The modes:

- fedit: mean of A and of B (the error above is left in).
- ffa (Sun et al., ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning"): A stays
  at its shared seeded initialisation and does not travel; mean(B_i) @ A = mean(B_i @ A) exactly.
- fedex (Singhal et al., ACL 2025, "FedEx-LoRA: Exact Aggregation for Federated and Efficient
  Fine-Tuning of Foundation Models"): mean A and B as fedit, and fold the residual
  mean(s B_i A_i) - s mean(B_i) mean(A_i) into W0, so the global model is the exact average.
- flex (Bai et al., NeurIPS 2024, "Federated Fine-tuning of Large Language Models under
  Heterogeneous Tasks and Client Resources"): clients train at their own ranks; the server forms
  M = mean(s B_i A_i) and gives every client the truncated SVD of M at its rank. The global adapter
  has rank `lora_r` (at least every client's), ordered by singular value, so the first r_c
  components of it are exactly M's best rank-r_c approximation.

`aggregation_error` = ||M - s B_glob A_glob||_F / ||M||_F, with the squared norms summed over the
adapted modules. fedex and flex need M itself: every client rank uploads sum_i n_i s B_i A_i, one
d_out x d_in matrix per adapted module (what they move beside the adapter). For fedit and ffa, M is
only measured: rank 0 gathers every sampled client's own update (its adapter: r (d_in + d_out) per
module, not d_out x d_in) and computes the error from the factors with (n+1)r x (n+1)r Gram matrices
(`factored_error`), so measuring costs each client rank its clients' adapters instead of one summed
adapter, and no d_out x d_in matrix travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fl import models
from fl.config import Config, parse_ranks
from fl.errors import ConfigError
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

MODES = ("fedit", "ffa", "fedex", "flex")


def lora_modules(keys: list[str] | set[str]) -> dict[str, tuple[str, str]]:
    """module name -> (A key, B key), from peft's state-dict keys (`<module>.lora_A.weight`)."""
    out = {}
    for k in sorted(keys):
        if k.endswith(".lora_A.weight"):
            module = k[: -len(".lora_A.weight")]
            out[module] = (k, f"{module}.lora_B.weight")
    return out


def products(state: State, modules: dict[str, tuple[str, str]], scale: float) -> State:
    """module -> s * B @ A (fp32, [d_out, d_in]): the update each module adds to its weight."""
    return {m: scale * (state[b].float() @ state[a].float()) for m, (a, b) in modules.items()}


def factor(mean_product: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with s * B @ A = the best rank-`rank` approximation of M, components in singular-value order.

    B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T (balanced). Ranks beyond M's own are zero columns.
    """
    u, sv, vh = torch.linalg.svd(mean_product.double() / scale, full_matrices=False)
    k = min(rank, sv.numel())
    root = sv[:k].clamp(min=0).sqrt()
    b = torch.zeros(mean_product.shape[0], rank, dtype=torch.float64, device=mean_product.device)
    a = torch.zeros(rank, mean_product.shape[1], dtype=torch.float64, device=mean_product.device)
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    return b.float(), a.float()


def truncate(state: State, modules: dict[str, tuple[str, str]], rank: int) -> State:
    """The state with every adapter cut to its first `rank` components (rows of A, columns of B)."""
    out = dict(state)
    for a_key, b_key in modules.values():
        out[a_key] = state[a_key].clone()
        out[a_key][rank:] = 0
        out[b_key] = state[b_key].clone()
        out[b_key][:, rank:] = 0
    return out


def rank_masks(state: State, modules: dict[str, tuple[str, str]], rank: int) -> State:
    """1 on the first `rank` components of each A and B, 0 beyond (multiplies the gradients)."""
    masks = {}
    for a_key, b_key in modules.values():
        masks[a_key] = torch.zeros_like(state[a_key])
        masks[a_key][:rank] = 1
        masks[b_key] = torch.zeros_like(state[b_key])
        masks[b_key][:, :rank] = 1
    return masks


def relative_error(target: State, got: State) -> float:
    """||target - got||_F / ||target||_F, the squared norms summed over every module (0 when target is 0)."""
    num = sum(float(((target[m] - got[m]) ** 2).sum()) for m in target)
    den = sum(float((target[m] ** 2).sum()) for m in target)
    return (num / den) ** 0.5 if den > 0 else 0.0


def factored_error(clients: list[tuple[float, State]], got: State, modules: dict[str, tuple[str, str]]) -> float:
    """relative_error(M, s B A) from the factors alone: M = sum_i w_i s B_i A_i / sum_i w_i over the
    clients' (weight, adapter) and s B A from `got`, never forming a d_out x d_in matrix. Per module,
    M - s B A = s P Q with P = [w_1 B_1 .. w_n B_n, -B] / .. and Q = [A_1; ..; A_n; A], and
    ||P Q||_F^2 = sum((P^T P) * (Q Q^T)): Gram matrices of (n+1) r rows, in float64. The scale s
    cancels in the ratio. Under a lossy codec (update_compression) the clients' adapters are what
    rank 0 decoded (top-k: with the client's residual folded in), not what they trained."""
    total = sum(w for w, _ in clients)
    if total <= 0:
        return 0.0
    num = den = 0.0
    for a, b in modules.values():
        bs = [st[b].double() * (w / total) for w, st in clients]
        as_ = [st[a].double() for _, st in clients]
        p_mat, q_mat = torch.cat(bs, dim=1), torch.cat(as_, dim=0)
        den += float(((p_mat.T @ p_mat) * (q_mat @ q_mat.T)).sum())
        p_all = torch.cat([p_mat, -got[b].double().to(p_mat.device)], dim=1)
        q_all = torch.cat([q_mat, got[a].double().to(q_mat.device)], dim=0)
        num += float(((p_all.T @ p_all) * (q_all @ q_all.T)).sum())
    # the Gram form can round a tiny square below zero
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0


class RankMask(ClientTerm):
    """FlexLoRA: gradients of the components beyond the client's rank are zeroed."""

    def __init__(self, mask: State):
        self.mask = mask

    @torch.no_grad()
    def after_backward(self, params: dict[str, nn.Parameter]) -> None:
        for k, m in self.mask.items():
            if params[k].grad is not None:
                params[k].grad.mul_(m.to(params[k].grad.device))


@dataclass
class LoraAggregator(Part):
    """A strategy's LoRA mode: what travels, what each client starts from, how the server combines.

    `modules`, `frozen` (FFA's shared A) and `base` (FedEx's W0 of each adapted module) come from
    the model once (`setup`), identically on every rank.
    """

    name = "base"  # what it checkpoints: FedEx's base weights
    mode: str = "fedit"
    scale: float = 1.0
    rank: int = 8
    client_ranks: list[int] | None = None  # flex
    measure_error: bool = True
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)
    frozen: State = field(default_factory=dict)
    base: State = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> LoraAggregator:
        ranks = parse_ranks(config.lora_ranks, config.num_clients, config.lora_r) if config.lora_ranks else None
        # under DP the updates that measure the aggregation error would reach rank 0 un-noised: no measurement
        measure = config.aggregation_error and not config.dp
        return cls(config.lora_aggregation, rank=config.lora_r, client_ranks=ranks, measure_error=measure)

    def __post_init__(self) -> None:
        self.needs_server_model = self.mode == "fedex"  # the residual is folded into rank 0's base weights
        self.gathers = self.measure_error and not self.sends_products  # fedit / ffa: the error from the factors

    @property
    def sends_products(self) -> bool:
        """Whether clients add sum_i n_i s B_i A_i to their upload (fedex / flex need it)."""
        return self.mode in ("fedex", "flex")

    def setup(self, ctx: SetupContext) -> None:
        """The adapted modules, the scale, FFA's frozen A and FedEx's base weights, off this rank's model
        (a model-free rank 0's `ServerModel` holds rank 1's layout)."""
        layout = models.adapter_layout(ctx.model)
        if layout is None:
            raise ConfigError("the LoRA aggregation part needs a LoRA model; use scheme=fedlora or fedkdlora")
        peft_state, self.scale = layout
        trainable = models.get_trainable_state(ctx.model)
        self.modules = lora_modules(set(peft_state))
        self.frozen = {a: peft_state[a].detach().clone() for a, _ in self.modules.values() if a not in trainable}
        if self.mode == "fedex":
            everything = dict(ctx.model.named_parameters())
            self.base = {m: everything[f"{m}.base_layer.weight"].detach().float().clone() for m in self.modules}

    def lora_keys(self) -> set[str]:
        return {k for pair in self.modules.values() for k in pair}

    def product_numel(self, state: State) -> int:
        """Values of the products part: d_out x d_in per adapted module."""
        full = {**self.frozen, **state}
        return sum(full[b].shape[0] * full[a].shape[1] for a, b in self.modules.values())

    def client_rank(self, client: int) -> int:
        return self.client_ranks[client] if self.mode == "flex" and self.client_ranks else self.rank

    # ---- down -----------------------------------------------------------------------------------
    def down(self, global_state: State, next_round: int, record: dict[str, Any]) -> dict[str, State]:
        return {"base": self.base} if self.mode == "fedex" else {}  # W0 of each adapted module, residuals folded in

    def read_down(self, parts: dict[str, State]) -> None:
        if "base" in parts:
            self.base = {k: v.clone() for k, v in parts["base"].items()}

    def load_into(self, model: nn.Module) -> None:
        if self.base:
            models.set_base_weights(model, self.base)

    # ---- the client -----------------------------------------------------------------------------
    def client_start(self, client: int, state: State) -> State:
        """flex: the global adapter cut to the client's rank (its truncated SVD); else the global state."""
        r = self.client_rank(client)
        return truncate(state, self.modules, r) if r < self.rank else state

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        r = self.client_rank(ctx.client)
        return [RankMask(rank_masks(ctx.start, self.modules, r))] if r < self.rank else []

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: nn.Module) -> dict[str, State]:
        if not self.sends_products:
            return {}
        weight = float(result.num_examples)
        mine = products({**self.frozen, **end}, self.modules, self.scale)
        return {"products": {m: v * weight for m, v in mine.items()}}

    def upload(self, global_state: State, plan: RoundPlan) -> dict[str, State]:
        if not self.sends_products:
            return {}
        full = {**self.frozen, **global_state}
        return {
            "products": {
                m: torch.zeros(full[b].shape[0], full[a].shape[1], device=full[b].device)
                for m, (a, b) in self.modules.items()
            }
        }

    def withheld(self, global_state: State) -> set[str]:
        """flex: A and B travel as products, not as changes."""
        return self.lora_keys() if self.mode == "flex" else set()

    # ---- the server -----------------------------------------------------------------------------
    def server_step(self, step: ServerStep) -> None:
        """The mode's global adapter, given step.new (the state after averaging every travelling change)."""
        if self.gathers and step.individual is not None and step.new is not None:
            step.record["aggregation_error"] = self.factored_error(step)
        if "products" not in step.sums.parts:
            return
        weight = step.sums.scalars["weight"]
        mean_products = {k: v / weight for k, v in step.sums.parts["products"].items()}
        step.new, error = self.combine(step.new, mean_products)
        step.record["aggregation_error"] = error

    def factored_error(self, step: ServerStep) -> float:
        """The aggregation error from every accepted client's own adapter (global + its change) and the
        new global adapter (`factored_error`)."""
        clients = []
        for _, msg in sorted((step.individual or {}).items()):
            weight = msg.scalars["weight"]
            if msg.scalars["accepted"] <= 0 or weight <= 0:
                continue
            per = weight if step.weighted else 1.0  # the change travelled multiplied by its examples
            own = {
                k: step.global_state[k].float() + v.to(step.global_state[k].device) / per
                for k, v in msg.parts["delta"].items()
            }
            clients.append((weight, {**self.frozen, **own}))
        return factored_error(clients, {**self.frozen, **step.new}, self.modules)  # type: ignore[dict-item]

    def combine(self, new: State, mean_products: State) -> tuple[State, float]:
        """(the mode's global adapter, the aggregation error) from the averaged state and mean(s B_i A_i)."""
        if self.mode == "flex":
            for m, (a, b) in self.modules.items():
                new[b], new[a] = factor(mean_products[m], self.rank, self.scale)
        effective = products({**self.frozen, **new}, self.modules, self.scale)
        if self.mode == "fedex":  # fold the residual into W0: it is part of the global update
            residual = {m: mean_products[m] - effective[m] for m in self.modules}
            self.base = {m: self.base[m] + residual[m].to(self.base[m].device) for m in self.modules}
            effective = {m: effective[m] + residual[m] for m in self.modules}
        return new, relative_error(mean_products, effective)

    def canonical(self, state: State) -> State:
        """flex after server-side training (KD): back to the ordered SVD form, exactly, at rank r."""
        if self.mode != "flex":
            return state
        out = dict(state)
        for a, b in self.modules.values():
            out[b], out[a] = factor(self.scale * state[b].float() @ state[a].float(), self.rank, self.scale)
        return out

    # ---- state, bytes, export -------------------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        return dict(self.base), {}

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        if tensors:
            self.base = {k: v.to(device) for k, v in tensors.items()}

    def state_bytes(self, client: int, global_state: State) -> int:
        """What one client's adapter costs on a deployment's wire: flex clients send their rank's A and B."""
        r, lora = self.client_rank(client), self.lora_keys()
        total = 0
        for k, v in global_state.items():
            total += v.numel() * r // self.rank if self.mode == "flex" and k in lora else v.numel()
        return total * 4

    def add_bytes(self, counts: ByteCount, plan: RoundPlan, global_state: State) -> None:
        if self.mode == "flex":  # each client's state at its own rank, both ways
            for c in plan.clients:
                counts.state[c] = counts.up[c] = counts.down[c] = self.state_bytes(c, global_state)
        base = sum(v.numel() for v in self.base.values()) * 4
        for c in plan.clients:  # fedex clients also receive the changed base weights
            counts.down[c] += base
        if self.sends_products:  # one product per adapted module and client rank
            counts.extra["bytes_products"] = self.product_numel(global_state) * 4 * counts.client_ranks

    def export(self, run_dir: Any, model: nn.Module, tokenizer: Any) -> tuple[nn.Module, str] | None:
        if self.mode != "fedex":
            return None
        # the base weights changed: the adapter alone would not reproduce the run; export the merged model
        return model.merge_and_unload(), "model"
