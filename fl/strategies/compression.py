"""Compressed updates as a part of the strategy (`update_compression`, codecs in `fl.comm.codecs`).

Up: each client's message (its change, and what travels beside it) is encoded on the client's
rank and decoded on rank 0 before anything is summed, so every aggregator and server optimizer
works on decoded updates. With top-k, what a client's encoding leaves out of its change is kept as
its residual (client state: checkpointed, restored on resume) and added to its next change.
Down: after the first full broadcast, rank 0 sends the change of the global state since what every
rank last received, encoded; every rank (rank 0 too) adds the decoded change to that, so all hold
the same global state. With top-k the server keeps the left-out part as its residual.
Deployment bytes (bytes_up / bytes_down) scale by the codec's ratio on the trainable state.
"""

from __future__ import annotations

from typing import Any

import torch

from fl.comm.codecs import Codec
from fl.comm.message import Message
from fl.config import Config
from fl.errors import ConfigError
from fl.strategies.base import ByteCount, Part, RoundPlan, State


class Compression(Part):
    """The part that encodes what travels (`encodes_wire`): `fl.comm.transport` calls its encode / decode
    methods (`encode_client`, `upload_bytes`, `codec.decode`, `encode_down`, `decode_down`,
    `down_bytes`, `remember`, `last_sent`) instead of moving fp32 tensors."""

    name = "codec"
    encodes_wire = True

    def __init__(self, codec: Codec, seed: int):
        self.codec, self.seed = codec, seed
        self.residuals: dict[int, State] = {}  # top-k: each client's left-out change (on its rank)
        self.down_residual: State = {}  # top-k: the server's left-out change of the global state
        self.last_sent: State | None = None  # the global state every rank last received

    @classmethod
    def from_config(cls, config: Config) -> Compression:
        if config.update_compression == "none":
            raise ConfigError("the compression part needs update_compression=bf16|int8|topk")
        if config.dp:
            raise ConfigError(
                f"update_compression={config.update_compression} with dp_clip: a compressed update's norm is no longer "
                "bounded by dp_clip (and top-k would sparsify the noise); use update_compression=none with DP"
            )
        return cls(Codec(config.update_compression, config.topk_ratio), config.seed)

    # ---- up -------------------------------------------------------------------------------------
    def encode_client(self, client: int, msg: Message, round_idx: int) -> torch.Tensor:
        """Client c's message as bytes; top-k: its residual added to its change first, and what the
        encoding leaves out of that kept as the next residual (a rejected client's message goes as it is)."""
        seed = self.seed * 7_919_993 + round_idx * 10_007 + client
        if self.codec.kind != "topk" or not msg.scalars.get("accepted"):
            return self.codec.encode(msg, seed)
        full, residual = added(msg, "delta", self.residuals.get(client))
        payload = self.codec.encode(full, seed)
        sent = self.codec.decode(payload, full).parts["delta"]
        self.residuals[client] = {k: v.float().cpu() - sent[k] for k, v in full.parts["delta"].items()}
        return payload

    def upload_bytes(self, template: Message) -> int:
        return self.codec.message_bytes(template)

    # ---- down -----------------------------------------------------------------------------------
    def encode_down(self, global_state: State, round_idx: int) -> torch.Tensor:
        """Rank 0: the change since the last broadcast (+ the residual), encoded; the residual kept."""
        assert self.last_sent is not None
        change = {k: v.float() - self.last_sent[k].to(v.device).float() for k, v in global_state.items()}
        msg, _ = added(Message({"change": change}), "change", self.down_residual if self.codec.kind == "topk" else None)
        payload = self.codec.encode(msg, self.seed * 3_007 + round_idx)
        if self.codec.kind == "topk":
            sent = self.codec.decode(payload, msg).parts["change"]
            self.down_residual = {k: v.float().cpu() - sent[k] for k, v in msg.parts["change"].items()}
        return payload

    def decode_down(self, payload: torch.Tensor) -> State:
        """Every rank: the last global state plus the decoded change."""
        assert self.last_sent is not None
        like = Message({"change": self.last_sent})
        change = self.codec.decode(payload, like, "cpu").parts["change"]
        return {k: (v.float() + change[k].to(v.device)).to(v.dtype) for k, v in self.last_sent.items()}

    def down_bytes(self, global_state: State) -> int:
        return self.codec.message_bytes(Message({"change": global_state}))

    def remember(self, global_state: State) -> None:
        self.last_sent = {k: v.detach().clone() for k, v in global_state.items()}

    # ---- state and bytes ------------------------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        return dict(self.down_residual), {}

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        self.down_residual = dict(tensors)

    def client_state_like(self, global_state: State) -> State | None:
        if self.codec.kind != "topk":
            return None
        return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}

    def client_state(self, client: int) -> State | None:
        return self.residuals.get(client)

    def load_client_state(self, client: int, state: State) -> None:
        self.residuals[client] = {k: v.cpu() for k, v in state.items()}

    def add_bytes(self, counts: ByteCount, plan: RoundPlan, global_state: State) -> None:
        numel = [v.numel() for v in global_state.values()]
        ratio = sum(self.codec.tensor_bytes(n) for n in numel) / max(1, 4 * sum(numel))
        for c in plan.clients:
            counts.up[c] = round(counts.up[c] * ratio)
            counts.down[c] = round(counts.down[c] * ratio)


def added(msg: Message, part: str, residual: State | None) -> tuple[Message, None]:
    """A copy of the message with `residual` added to its `part` (error feedback)."""
    full = Message({p: dict(t) for p, t in msg.parts.items()}, dict(msg.scalars))
    for k, v in (residual or {}).items():
        full.parts[part][k] = full.parts[part][k].float() + v.to(full.parts[part][k].device)
    return full, None
