"""The hook set every algorithm implements: a `Part` of the strategy, and what its hooks see.

fl's own algorithms are parts, and so is a user's (docs/extending.md): a part names what it needs
(`needs_server_model`, `needs_public_rows`, `gathers`, `encodes_wire`), set-up provides it, and
the round calls its hooks. A round, as the parts see it (every hook is a no-op unless overridden):

    setup           every rank, once: what the part needs of the task, model, tokenizer, public rows
    plan            every rank: the round's plan (sampled clients, lr, extras; a reason to stop)
    down            rank 0: what goes down beside the global state; `read_down` on every rank
    load_into       every rank: what the part keeps of the global model beyond its trainable state
    client_start    the state a client trains from (FlexLoRA: cut to the client's rank)
    client_terms    hooks inside local training: the loss, after backward, after the optimizer step
    client_finish   what a client sends up beside its change (SCAFFOLD's control change, KD logits)
    upload          the zeros of those parts (the round's upload template); `withheld`: what does not
    server_step     rank 0: in the strategy's order, aggregator -> server optimizer -> other parts
    canonical       rank 0: after a part trained the model on the server, back to this part's form
    evaluate        rank 0: record entries of the evaluation
    state           tensors and JSON across rounds (checkpoints); `client_state` for per-client state
    add_bytes       what one client's messages cost on a deployment's wire
    export          how the final model is saved, and what is saved beside it

Everything is keyed by name (`State` = dict[str, Tensor]); no hook sees a rank or a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl.comm.message import Message

State = dict[str, torch.Tensor]
REJECT_REASONS = {1: "non-finite values", 2: "update norm above max_update_norm"}


@dataclass(frozen=True)
class RoundPlan:
    """What every rank knows about round r before it starts (the same everywhere, by construction)."""

    round: int
    clients: tuple[int, ...]  # sampled clients, sorted
    lr: float
    extra: Mapping[str, Any] = field(default_factory=dict)  # what parts add, by name (KD: "public_rows")
    stop: str | None = None  # a part's reason to stop cleanly before this round (DP's budget)


@dataclass
class SetupContext:
    """What a part's `setup` sees on one rank, once, before round 1 (after the checks of set-up)."""

    config: Any  # the run's fl.Config
    task: Any  # the Task (a model-free rank 0: its copy without rows)
    model: nn.Module | Any  # this rank's model (a model-free rank 0: models.ServerModel, the trainable state)
    tokenizer: Any  # None on a model-free rank 0
    device: torch.device
    is_server: bool  # rank 0 (in one process, the same process also hosts the clients)
    hosts_clients: bool  # this rank trains clients
    public_size: int  # rows of the public slice (the first rows of task.train)
    public: Any = None  # the public slice encoded with the model's tokenizer, where needs_public_rows asks


@dataclass
class ClientContext:
    """One client's round, as its hooks see it."""

    client: int
    plan: RoundPlan
    start: State  # what the client trains from
    seed: int  # the client's seed this round (dropout, data order)
    batch_size: int
    eval_batch_size: int
    device: torch.device
    shard: tuple[int, int] = (0, 1)  # (this rank's place, the client's ranks): each takes every count-th row


@dataclass
class TrainResult:
    num_examples: int  # the client's weight in the average: examples it holds
    loss_sum: float  # training loss summed over every example seen (all epochs)
    examples_seen: int
    steps: int
    lr_sum: float  # sum of the step sizes taken (SCAFFOLD's denominator)
    last_lr: float


class ClientTerm:
    """A part's hooks inside one client's local training; each is a no-op by default."""

    def loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss, given the task's loss of the private batch (KD mixes in its KL term)."""
        return loss

    def after_backward(self, params: dict[str, nn.Parameter]) -> None:
        """Change the gradients (FedProx's pull, FlexLoRA's rank mask)."""

    def after_step(self, params: dict[str, nn.Parameter], lr: float) -> None:
        """Change the weights after the optimizer's step (SCAFFOLD's correction)."""


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
    parts: dict[str, State] = field(default_factory=dict)  # from the parts' client_finish, as they travel


@dataclass
class ServerStep:
    """Rank 0's server step of one round; parts fill it in order."""

    plan: RoundPlan
    global_state: State  # before this round
    sums: Message  # the clients' summed upload
    individual: dict[int, Message] | None  # every client's own upload, when the aggregator gathers
    load: Callable[[State], None]  # loads a global state into rank 0's model (for parts that train it)
    weighted: bool = True  # each individual message's delta is multiplied by its client's examples
    delta: State | None = None  # the pseudo-gradient (the aggregator's)
    new: State | None = None  # the next global state (the server optimizer's, then the parts')
    retrained: bool = False  # a part trained the model on the server (KD): parts may re-canonicalise
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class ByteCount:
    """A deployment's bytes per sampled client: its state on the wire, then what each part adds."""

    state: dict[int, int]  # client -> bytes of its trainable state (FlexLoRA's add_bytes: at its rank)
    up: dict[int, int]
    down: dict[int, int]
    extra: dict[str, int]  # record keys of their own (bytes_logits, bytes_products)
    client_ranks: int = 1  # ranks that train clients (what one upload per client rank costs)


class Part:
    """One algorithm, as hooks on the round. `name` prefixes its state in checkpoints and messages.

    What a part needs from set-up is declared by the attributes below, never asked for by name (set
    them in `__init__` when they depend on the part's settings). A hook that changes the plan returns
    `dataclasses.replace(plan, ...)`, so that what earlier parts set (extras, a stop) stays.
    """

    name: str = ""
    needs_server_model = False  # rank 0 keeps the whole model (it trains or changes it on the server)
    needs_public_rows = False  # ranks that host clients encode the public slice (`SetupContext.public`)
    gathers = False  # rank 0 needs every client's own upload (`ServerStep.individual`), not only the sum
    encodes_wire = False  # the part encodes what travels (`fl.strategies.compression`: the WireCodec methods)
    releases_every_round = False  # DP: the server step runs (and is noised) even with no accepted update

    # ---- set-up, plan and down ------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        """Every rank, once: take what the part needs (the model's layout, a teacher, the public rows)."""

    def plan(self, plan: RoundPlan) -> RoundPlan:
        """The round's plan (every rank alike): add extras, resample, or set `stop` to end the run cleanly."""
        return plan

    def down(self, global_state: State, next_round: int, record: dict[str, Any]) -> dict[str, State]:
        """Parts of the downlink beside the global state (rank 0 fills them; others pass the shapes)."""
        return {}

    def read_down(self, parts: dict[str, State]) -> None:
        """Keep what this part sent down (every rank, after the broadcast)."""

    def load_into(self, model: nn.Module) -> None:
        """Load what this part keeps of the global model beyond the trainable state (FedEx's base)."""

    # ---- the client ---------------------------------------------------------------------------
    def client_start(self, client: int, state: State) -> State:
        return state

    def client_terms(self, ctx: ClientContext) -> list[ClientTerm]:
        return []

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: nn.Module) -> dict[str, State]:
        """Upload parts of one accepted client, already weighted as they are summed."""
        return {}

    def upload(self, global_state: State, plan: RoundPlan) -> dict[str, State]:
        """Zeros of every upload part this part adds (the same on every rank)."""
        return {}

    def withheld(self, global_state: State) -> set[str]:
        """Trainable tensors that do not travel as changes (FlexLoRA's A and B travel as products)."""
        return set()

    # ---- the server ---------------------------------------------------------------------------
    def server_step(self, step: ServerStep) -> None:
        """Rank 0, in the strategy's order."""

    def canonical(self, state: State) -> State:
        """The state after server-side training, back in this part's canonical form (FlexLoRA's SVD)."""
        return state

    def evaluate(self) -> dict[str, float]:
        """Record entries of the evaluation (the KD teacher's metrics)."""
        return {}

    # ---- state --------------------------------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        return {}, {}

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        """Restore `state()`; every tensor onto `device`."""

    def client_state_like(self, global_state: State) -> State | None:
        """Zeros of the state this part keeps per client (SCAFFOLD's c_i), or None."""
        return None

    def client_state(self, client: int) -> State | None:
        return None

    def load_client_state(self, client: int, state: State) -> None:
        pass

    # ---- bytes and the final model ------------------------------------------------------------
    def add_bytes(self, counts: ByteCount, plan: RoundPlan, global_state: State) -> None:
        """Change what each client moves (`counts.up` / `counts.down`, by client) and add record keys."""

    def export(self, run_dir: Path, model: nn.Module, tokenizer: Any) -> tuple[nn.Module, str] | None:
        """Write what this part keeps beside the final model (the KD teacher); return (model to save,
        folder name) when it changes how the final model is saved (FedEx: merged), else None."""
        return None


def update_problem(delta: State, max_norm: float | None) -> tuple[int, float]:
    """(reject code, L2 norm of the update): 1 for NaN/Inf, 2 when farther than max_norm, else 0."""
    sq = torch.zeros((), dtype=torch.float64)
    for v in delta.values():
        if not torch.isfinite(v).all():
            return 1, float("nan")
        sq += (v.double() ** 2).sum().cpu()
    norm = float(sq.sqrt())
    return (2 if max_norm is not None and norm > max_norm else 0), norm


def zeros_like_state(state: State) -> State:
    """fp32 zeros with the names and shapes of `state`."""
    return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}
