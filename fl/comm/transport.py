"""How a round's messages travel: the clients' uploads to rank 0 and the global state down, in one
of three ways the strategy decides. Every byte crosses through `fl.comm`.

- summed: each rank adds its clients' messages into one, and one (bucketed) reduce sums the ranks';
- gathered (a part that `gathers`: a robust aggregator, the LoRA error): rank 0 gathers every
  client's own message and forms the sums;
- encoded (the part that `encodes_wire`, e.g. `update_compression`): each client's message is
  encoded on its rank, rank 0 gathers the payloads and decodes them, in client order, before summing
  (the same arithmetic with or without torchrun). Down, after the first full broadcast, the global
  state's change is encoded.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from fl import comm
from fl.comm.message import Message

if TYPE_CHECKING:  # the strategy is duck-typed here: its codec and its parts' declarations
    from fl.strategies.base import RoundPlan, State
    from fl.strategies.strategy import Strategy


class Uplink:
    """This rank's part of a round's upload (see the module docstring)."""

    def __init__(self, strategy: Strategy, template: Message, plan: RoundPlan):
        self.strategy, self.template, self.plan = strategy, template, plan
        self.codec: Any = strategy.codec
        self.sums = template.zeros() if not (strategy.gathers or self.codec) else None
        self.each: dict[int, Any] = {}  # client -> its message, or its encoded payload

    def add(self, client: int, msg: Message) -> None:
        if self.codec is not None:
            self.each[client] = self.codec.encode_client(client, msg, self.plan.round)
        elif self.sums is None:
            self.each[client] = msg
        else:
            self.sums.add_(msg)

    def collect(self, rt: comm.Runtime, owners: dict[int, int]) -> tuple[Message, dict[int, Message] | None, int]:
        """(the summed upload on rank 0, every client's own message when a part gathers, bytes moved)."""
        if self.sums is not None:
            sums, moved = comm.reduce_sum(rt, self.sums)
            return sums, None, moved
        sampled = {c: owners[c] for c in self.plan.clients}
        if self.codec is not None:
            size = self.codec.upload_bytes(self.template)
            payloads, moved = comm.gather_bytes(rt, self.each, size, sampled)
            got = {c: self.codec.codec.decode(p, self.template, rt.device) for c, p in sorted(payloads.items())}
        else:
            got, moved = comm.gather_messages(rt, self.each, self.template, sampled)
        sums = self.template.zeros()
        for c in sorted(got):
            sums.add_(got[c])
        return sums, (got if self.strategy.gathers else None), moved


def send_down(
    rt: comm.Runtime, strategy: Strategy, global_state: State, next_round: int, record: dict[str, Any]
) -> tuple[State, int, float]:
    """Rank 0's global state and what the parts send with it, to every rank; (the global state every
    rank now holds, bytes moved, seconds)."""
    msg = strategy.downlink(global_state, next_round, record)
    codec: Any = strategy.codec
    t0 = time.perf_counter()
    if codec is None or codec.last_sent is None:  # the first broadcast (and after a resume) is whole
        msg, moved = comm.broadcast(rt, msg)
    else:
        size = codec.down_bytes(global_state)
        payload = codec.encode_down(global_state, next_round) if rt.is_main else torch.zeros(size, dtype=torch.uint8)
        payload, moved = comm.broadcast_bytes(rt, payload)
        rest = Message({p: t for p, t in msg.parts.items() if p != "global"})
        rest, more = comm.broadcast(rt, rest) if rest.parts else (rest, 0)
        msg = Message({**rest.parts, "global": codec.decode_down(payload)})
        moved += more
    new = strategy.read_downlink(msg)
    if codec is not None:
        codec.remember(new)
    return new, moved, time.perf_counter() - t0


def upload_bytes_per_rank(strategy: Strategy, template: Message, plan: RoundPlan, owners: dict[int, int]) -> int:
    """Bytes each client rank sends up in a round, as `Uplink.collect` moves them (pure: for reports
    such as a 7B recipe's): summed, one template; gathered, the padded rows of the busiest rank's
    sampled clients; encoded, that many payloads."""
    if not (strategy.gathers or strategy.codec):
        return template.nbytes
    counts: dict[int, int] = {}
    for c in plan.clients:
        counts[owners[c]] = counts.get(owners[c], 0) + 1
    rows = max(counts.values(), default=1)
    each = strategy.codec.upload_bytes(template) if strategy.codec else template.nbytes
    return rows * each
