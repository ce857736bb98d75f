"""The strategy: what trains, what travels, and how the server turns it into the next global state.

FedAvg and FedLoRA are one strategy with `trainable=full|lora`; FedKDLoRA adds distillation.
Its parts, each small:

- the round plan (every rank computes it, a pure function of the config and the round): the
  sampled clients, the round's learning rate, the public rows distilled on;
- the client part: `local_terms` (FedProx, SCAFFOLD), `client_message` (what one client sends);
- the server part: `next_global` (combine -> server optimizer -> SCAFFOLD's control), with
  state across rounds that `state` / `load_state` checkpoint.

What travels, by name (`fl.message.Message`):
  up:   delta/<tensor> (sum_i w_i * (theta_i - global)), logits/student (KD on clients:
        sum_i n_i * logits_i on the public rows), control/<tensor> (SCAFFOLD: sum_i (c_i+ - c_i)),
        scalars weight, accepted, c<i>.examples|loss_sum|seen|reject|norm for each sampled client
  down: global/<tensor>, control/<tensor> (SCAFFOLD's c), teacher/logits (KD on clients)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from fl import privacy
from fl.message import Message
from fl.strategies.aggregate import State, coordinate_median, trimmed_mean
from fl.strategies.local import (
    LocalTerms,
    scaffold_client_update,
    scaffold_correction,
    scaffold_server_update,
)
from fl.strategies.lora_agg import LoraAggregator
from fl.strategies.server_opt import ServerOptimizer

REJECT_REASONS = {1: "non-finite values", 2: "update norm above max_update_norm"}


@dataclass(frozen=True)
class RoundPlan:
    """What every rank knows about round r before it starts (the same everywhere, by construction)."""

    round: int
    clients: tuple[int, ...]  # sampled clients, sorted
    lr: float
    public_rows: tuple[int, ...] = ()  # distilled on this round (KD), indices into the public slice


@dataclass
class ClientUpdate:
    """One client's round, as its rank saw it."""

    client: int
    num_examples: int
    delta: State  # theta_i - global, fp32
    loss_sum: float
    seen: int
    reject: int = 0  # 0: accepted; else a key of REJECT_REASONS
    norm: float = 0.0
    logits: torch.Tensor | None = None  # KD on clients: [P, K] on the public rows
    control_change: State | None = None  # SCAFFOLD: c_i+ - c_i
    products: State | None = None  # LoRA modes: s * B_i @ A_i per adapted module


def public_rows(seed: int, round_idx: int, public_size: int, per_round: int | None) -> list[int]:
    """The round's public rows: a seeded sample, the same on every rank (indices into the slice)."""
    if per_round is None or per_round >= public_size:
        return list(range(public_size))
    return sorted(random.Random(seed * 7_919 + round_idx).sample(range(public_size), per_round))


def sample_clients(num_clients: int, per_round: int | None, seed: int, round_idx: int) -> tuple[int, ...]:
    """Seeded uniform sampling without replacement; every client when per_round is unset."""
    if per_round is None or per_round >= num_clients:
        return tuple(range(num_clients))
    rng = random.Random(seed * 1_000_003 + round_idx * 7_919 + 17)
    return tuple(sorted(rng.sample(range(num_clients), per_round)))


def update_problem(delta: State, max_norm: float | None) -> tuple[int, float]:
    """(reject code, L2 norm of the update): 1 for NaN/Inf, 2 when farther than max_norm, else 0."""
    sq = torch.zeros((), dtype=torch.float64)
    for v in delta.values():
        if not torch.isfinite(v).all():
            return 1, float("nan")
        sq += (v.double() ** 2).sum().cpu()
    norm = float(sq.sqrt())
    return (2 if max_norm is not None and norm > max_norm else 0), norm


@dataclass
class Strategy:
    trainable: str  # full | lora
    num_clients: int
    seed: int
    lr: float
    round_lr_decay: float = 1.0
    clients_per_round: int | None = None
    aggregation: str = "mean"  # mean | median | trimmed_mean
    trim_ratio: float = 0.1
    server_opt: ServerOptimizer = field(default_factory=ServerOptimizer)
    prox_mu: float = 0.0
    scaffold: bool = False
    kd: bool = False  # FedKDLoRA
    kd_on_clients: bool = False
    kd_public_examples: int | None = None
    lora: LoraAggregator | None = None  # LoRA aggregation mode (fedit, ffa, fedex, flex)
    dp: privacy.PrivacySettings | None = None  # client-level DP (DP-FedAvg)
    control: State = field(default_factory=dict)  # SCAFFOLD's c (every rank, from the downlink)
    client_controls: dict[int, State] = field(default_factory=dict)  # SCAFFOLD's c_i, on the client's rank

    @property
    def gathers(self) -> bool:
        """Whether rank 0 needs every client's update rather than their sum."""
        return self.aggregation != "mean"

    # ---- the plan ---------------------------------------------------------------------------
    def plan_round(self, round_idx: int, public_size: int) -> RoundPlan:
        if self.dp is not None:  # the accountant assumes Poisson sampling
            clients = privacy.poisson_sample(self.num_clients, self.dp.rate, self.seed, round_idx)
        else:
            clients = sample_clients(self.num_clients, self.clients_per_round, self.seed, round_idx)
        lr = self.lr * self.round_lr_decay ** (round_idx - 1)
        rows = public_rows(self.seed, round_idx, public_size, self.kd_public_examples) if self.kd else []
        return RoundPlan(round_idx, clients, lr, tuple(rows))

    # ---- down -------------------------------------------------------------------------------
    def downlink(self, global_state: State, teacher_logits: torch.Tensor | None) -> Message:
        """What rank 0 sends after each aggregation (and before round 1): the global state, SCAFFOLD's
        c, the teacher's logits for the next round's public rows (KD on clients)."""
        parts = {"global": global_state}
        if self.scaffold:
            parts["control"] = self.control or {k: torch.zeros_like(v) for k, v in global_state.items()}
        if teacher_logits is not None:
            parts["teacher"] = {"logits": teacher_logits}
        if self.lora is not None and self.lora.mode == "fedex":
            parts["base"] = self.lora.base  # W0 of each adapted module, residuals folded in
        return Message(parts)

    def read_downlink(self, msg: Message) -> tuple[State, torch.Tensor | None]:
        """(global state, teacher logits or None); keeps SCAFFOLD's c."""
        if self.scaffold:
            self.control = {k: v.clone() for k, v in msg.parts["control"].items()}
        teacher = msg.parts.get("teacher", {}).get("logits")
        if "base" in msg.parts and self.lora is not None:
            self.lora.base = {k: v.clone() for k, v in msg.parts["base"].items()}
        return {k: v.clone() for k, v in msg.parts["global"].items()}, teacher

    # ---- the client part --------------------------------------------------------------------
    def client_start(self, client: int, global_state: State) -> State:
        """What client c trains from: the global state (FlexLoRA: cut to the client's rank)."""
        return self.lora.client_start(global_state, client) if self.lora is not None else global_state

    def local_terms(self, client: int, start: State) -> LocalTerms | None:
        """FedProx's anchor, SCAFFOLD's correction and FlexLoRA's rank mask for this client, or None."""
        mask = self.lora.client_masks(start, client) if self.lora is not None else None
        if self.prox_mu <= 0 and not self.scaffold and mask is None:
            return None
        correction = scaffold_correction(self.control, self.client_controls.get(client)) if self.scaffold else None
        return LocalTerms(self.prox_mu, start if self.prox_mu > 0 else None, correction, mask)

    def finish_client(self, client: int, start: State, end: State, lr_sum: float) -> State | None:
        """SCAFFOLD: update this client's control (kept on its rank); returns c_i+ - c_i."""
        if not self.scaffold:
            return None
        new, change = scaffold_client_update(self.client_controls.get(client), self.control, start, end, lr_sum)
        self.client_controls[client] = new
        return change

    def upload_template(self, global_state: State, plan: RoundPlan, num_labels: int) -> Message:
        """Zeros with every name the round's upload carries (the same on every rank)."""
        keys = self.lora.delta_keys(global_state) if self.lora is not None else list(global_state)
        parts = {"delta": {k: torch.zeros_like(global_state[k], dtype=torch.float32) for k in keys}}
        if self.lora is not None and self.lora.sends_products:
            parts["products"] = self.lora.product_template(global_state)
        if self.kd_on_clients:
            device = next(iter(global_state.values())).device
            parts["logits"] = {"student": torch.zeros(len(plan.public_rows), num_labels, device=device)}
        if self.scaffold:
            parts["control"] = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}
        scalars = {"weight": 0.0, "accepted": 0.0}
        for c in plan.clients:
            scalars.update({f"c{c}.{k}": 0.0 for k in ("examples", "loss_sum", "seen", "reject", "norm")})
        return Message(parts, scalars)

    def client_message(self, template: Message, u: ClientUpdate, plan: RoundPlan) -> Message:
        """One client's contribution: weighted by its examples (summed mode) or as it is (gathered
        mode); under DP clipped, weighted 1, with its share of the noise, and no per-client statistics."""
        msg = template.zeros()
        stats = {"examples": u.num_examples, "loss_sum": u.loss_sum, "seen": u.seen, "reject": u.reject, "norm": u.norm}
        if self.dp is not None:  # statistics about one client's data do not leave its rank under DP
            stats = {"examples": 0, "loss_sum": 0.0, "seen": 0, "reject": u.reject, "norm": 0.0}
        msg.scalars.update({f"c{u.client}.{k}": float(v) for k, v in stats.items()})
        if u.reject:
            return msg
        if self.dp is not None:
            return self._private_message(msg, u, plan)
        weight = float(u.num_examples)
        alpha = 1.0 if self.gathers else weight
        for k in msg.parts["delta"]:
            msg.parts["delta"][k].add_(u.delta[k], alpha=alpha)
        if u.products is not None and "products" in msg.parts:
            for k, v in u.products.items():
                msg.parts["products"][k].add_(v, alpha=weight)
        if u.logits is not None:
            msg.parts["logits"]["student"].add_(u.logits, alpha=weight)
        if u.control_change is not None:
            for k, v in u.control_change.items():
                msg.parts["control"][k].add_(v)
        msg.scalars["weight"], msg.scalars["accepted"] = weight, 1.0
        return msg

    def _private_message(self, msg: Message, u: ClientUpdate, plan: RoundPlan) -> Message:
        """DP-FedAvg's client part: clip to dp_clip, weight 1, add this client's noise share."""
        dp = self.dp
        assert dp is not None
        clipped, _ = privacy.clip(u.delta, dp.clip)
        if dp.placement == "clients":
            share = privacy.gaussian(
                clipped, dp.client_noise_std(len(plan.clients)), privacy.noise_seed(self.seed, plan.round, u.client)
            )
            clipped = {k: v + share[k] for k, v in clipped.items()}
        for k in msg.parts["delta"]:
            msg.parts["delta"][k].add_(clipped[k])
        msg.scalars["weight"], msg.scalars["accepted"] = 1.0, 1.0
        return msg

    def private_mean(self, sums: Message, plan: RoundPlan) -> State:
        """DP-FedAvg's server part: (sum of clipped updates + noise) / (q N). The server draws the noise
        in server placement, and in client placement when no client was sampled (so every round is noised)."""
        dp = self.dp
        assert dp is not None
        total = dict(sums.parts["delta"])
        if dp.placement == "server" or not plan.clients:
            noise = privacy.gaussian(
                total, dp.noise_multiplier * dp.clip, privacy.noise_seed(self.seed, plan.round, None)
            )
            total = {k: v + noise[k] for k, v in total.items()}
        return {k: v / dp.denominator for k, v in total.items()}

    # ---- the server part --------------------------------------------------------------------
    def next_global(
        self, global_state: State, sums: Message, individual: dict[int, Message] | None, plan: RoundPlan
    ) -> State:
        """Combine the clients' updates into the pseudo-gradient, step the server optimizer, update
        SCAFFOLD's c. The caller keeps the global state when no update was accepted (except under DP,
        where every round releases a noised update)."""
        if self.dp is not None:
            delta = self.private_mean(sums, plan)
        elif self.gathers:
            deltas = [m.parts["delta"] for c, m in sorted((individual or {}).items()) if m.scalars["accepted"] > 0]
            combine = coordinate_median if self.aggregation == "median" else lambda s: trimmed_mean(s, self.trim_ratio)
            delta = combine(deltas)
        else:
            delta = {k: v / sums.scalars["weight"] for k, v in sums.parts["delta"].items()}
        if set(delta) != set(global_state):  # flex: A and B travel as products, not as changes
            delta = {k: delta.get(k, torch.zeros_like(v)) for k, v in global_state.items()}
        if self.server_opt.is_plain_fedavg and not self.gathers and self.dp is None:
            new = {k: global_state[k] + delta[k] for k in global_state}
            self.server_opt.steps += 1
        else:
            new = self.server_opt.step(global_state, delta)
        if self.lora is not None:
            mean_products = None
            if "products" in sums.parts:
                mean_products = {k: v / sums.scalars["weight"] for k, v in sums.parts["products"].items()}
            new = self.lora.combine(global_state, new, mean_products)
        if self.scaffold:
            self.control = scaffold_server_update(self.control, sums.parts["control"], self.num_clients)
        return new

    def state(self) -> tuple[State, dict]:
        """Server state across rounds: the server optimizer's moments and SCAFFOLD's c."""
        tensors, extra = self.server_opt.state()
        tensors = {f"opt.{k}": v for k, v in tensors.items()}
        tensors.update({f"control.{k}": v for k, v in self.control.items()})
        if self.lora is not None:
            tensors.update({f"base.{k}": v for k, v in self.lora.base.items()})
        return tensors, {"server_opt": extra}

    def load_state(self, tensors: State, extra: dict, device: torch.device) -> None:
        opt = {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}
        self.server_opt.load(opt, extra.get("server_opt", {}), device)
        self.control = {k[8:]: v.to(device) for k, v in tensors.items() if k.startswith("control.")}
        base = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("base.")}
        if self.lora is not None and base:
            self.lora.base = base


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
