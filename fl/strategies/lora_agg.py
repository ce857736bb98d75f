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
adapted modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fl.strategies.aggregate import State

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


def aggregation_error(mean_products: State, state: State, modules: dict[str, tuple[str, str]], scale: float) -> float:
    """||M - s B A||_F / ||M||_F over every adapted module (0 when M is 0)."""
    got = products(state, modules, scale)
    num = sum(float(((mean_products[m] - got[m]) ** 2).sum()) for m in modules)
    den = sum(float((mean_products[m] ** 2).sum()) for m in modules)
    return (num / den) ** 0.5 if den > 0 else 0.0


def parse_ranks(spec: str, num_clients: int, global_rank: int) -> list[int]:
    """'8,8,4,2' -> one rank per client; a shorter list repeats (client c gets ranks[c % len])."""
    try:
        ranks = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"lora_ranks={spec!r} must be comma-separated integers, e.g. 8,8,4,2") from None
    if not ranks or min(ranks) < 1 or max(ranks) > global_rank:
        raise ValueError(f"lora_ranks={spec!r}: each rank must be in [1, lora_r={global_rank}]")
    return [ranks[c % len(ranks)] for c in range(num_clients)]


@dataclass
class LoraAggregator:
    """A strategy's LoRA mode: what travels, what each client starts from, how the server combines.

    `modules`, `frozen` (FFA's shared A) and `base` (FedEx's W0 of each adapted module) come from
    the model once (`from_model`), identically on every rank.
    """

    mode: str = "fedit"
    scale: float = 1.0
    rank: int = 8
    client_ranks: list[int] | None = None  # flex
    measure_error: bool = True
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)
    frozen: State = field(default_factory=dict)
    base: State = field(default_factory=dict)
    last_error: float | None = None

    @property
    def sends_products(self) -> bool:
        """Whether clients add sum_i n_i s B_i A_i to their upload (needed by fedex / flex, else a measurement)."""
        return self.mode in ("fedex", "flex") or self.measure_error

    def from_model(self, model: torch.nn.Module, trainable: State) -> None:
        """Read the adapted modules, the scale, FFA's frozen A and FedEx's base weights off the model."""
        everything = dict(model.named_parameters())
        from peft import get_peft_model_state_dict

        peft_state = get_peft_model_state_dict(model)
        self.modules = lora_modules(set(peft_state))
        cfg = next(iter(model.peft_config.values()))
        self.scale = cfg.lora_alpha / cfg.r
        self.frozen = {a: peft_state[a].detach().clone() for a, _ in self.modules.values() if a not in trainable}
        if self.mode == "fedex":
            self.base = {m: everything[f"{m}.base_layer.weight"].detach().float().clone() for m in self.modules}

    def lora_keys(self) -> set[str]:
        return {k for pair in self.modules.values() for k in pair}

    def delta_keys(self, state: State) -> list[str]:
        """Tensors that travel as (weighted) changes: all, but flex's A / B travel as products."""
        return [k for k in state if self.mode != "flex" or k not in self.lora_keys()]

    def product_template(self, state: State) -> State:
        full = {**self.frozen, **state}
        return {m: torch.zeros(full[b].shape[0], full[a].shape[1], device=full[b].device)
                for m, (a, b) in self.modules.items()}  # fmt: skip

    def product_numel(self, state: State) -> int:
        """Values of the products part: d_out x d_in per adapted module."""
        full = {**self.frozen, **state}
        return sum(full[b].shape[0] * full[a].shape[1] for a, b in self.modules.values())

    def client_products(self, end: State) -> State:
        return products({**self.frozen, **end}, self.modules, self.scale)

    def client_rank(self, client: int) -> int:
        return self.client_ranks[client] if self.mode == "flex" and self.client_ranks else self.rank

    def client_start(self, global_state: State, client: int) -> State:
        """flex: the global adapter cut to the client's rank (its truncated SVD); else the global state."""
        r = self.client_rank(client)
        return truncate(global_state, self.modules, r) if r < self.rank else global_state

    def client_masks(self, global_state: State, client: int) -> State | None:
        r = self.client_rank(client)
        return rank_masks(global_state, self.modules, r) if r < self.rank else None

    def combine(self, global_state: State, new: State, mean_products: State | None) -> State:
        """The mode's global adapter, given `new` (the state after averaging every travelling change)."""
        if self.mode == "flex" and mean_products is not None:
            for m, (a, b) in self.modules.items():
                new[b], new[a] = factor(mean_products[m], self.rank, self.scale)
        residual = None
        if self.mode == "fedex" and mean_products is not None:
            got = products({**self.frozen, **new}, self.modules, self.scale)
            residual = {m: mean_products[m] - got[m] for m in self.modules}
            self.base = {m: self.base[m] + residual[m].to(self.base[m].device) for m in self.modules}
        if mean_products is not None:
            effective = products({**self.frozen, **new}, self.modules, self.scale)
            if residual is not None:  # fedex: the folded residual is part of the global update
                effective = {m: effective[m] + residual[m] for m in self.modules}
            num = sum(float(((mean_products[m] - effective[m]) ** 2).sum()) for m in self.modules)
            den = sum(float((mean_products[m] ** 2).sum()) for m in self.modules)
            self.last_error = (num / den) ** 0.5 if den > 0 else 0.0
        return new

    def canonical(self, state: State) -> State:
        """flex after server-side training (KD): back to the ordered SVD form, exactly, at rank r."""
        if self.mode != "flex":
            return state
        out = dict(state)
        for a, b in self.modules.values():
            out[b], out[a] = factor(self.scale * state[b].float() @ state[a].float(), self.rank, self.scale)
        return out

    def client_bytes(self, state: State, client: int) -> int:
        """What one client's adapter costs on a deployment's wire: flex clients send their rank's A and B."""
        r = self.client_rank(client)
        total = 0
        for k, v in state.items():
            if self.mode == "flex" and k in self.lora_keys():
                total += v.numel() * r // self.rank
            else:
                total += v.numel()
        return total * 4
