"""Messages: what travels between ranks, by name. Pure data and packing, no process group.

A `Message` holds parts (e.g. "delta", "logits", "control") of named tensors, plus named scalars.
On the wire it is one flat fp32 buffer: the tensors in sorted (part, name) order, then the
scalars in sorted name order, so sender and receiver agree on names, never on positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

WIRE_DTYPE = torch.float32
WIRE_BYTES = 4


@dataclass
class Message:
    """What one collective moves: parts (e.g. "delta", "logits") of named tensors, and named scalars."""

    parts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)

    def zeros(self) -> Message:
        """Same names and shapes, all zeros (fp32): what a rank with nothing to add contributes."""
        parts = {
            p: {k: torch.zeros(v.shape, dtype=WIRE_DTYPE, device=v.device) for k, v in t.items()}
            for p, t in self.parts.items()
        }
        return Message(parts, dict.fromkeys(self.scalars, 0.0))

    @property
    def nbytes(self) -> int:
        """Bytes of this message on the wire."""
        numel = sum(t.numel() for part in self.parts.values() for t in part.values()) + len(self.scalars)
        return numel * WIRE_BYTES

    def add_(self, other: Message, alpha: float = 1.0) -> Message:
        """self += alpha * other, in place (names must match)."""
        if set(self.parts) != set(other.parts) or set(self.scalars) != set(other.scalars):
            raise ValueError("messages differ in their names; both must follow the round's template")
        for p, tensors in self.parts.items():
            for k, v in tensors.items():
                v.add_(other.parts[p][k].to(v.device), alpha=alpha)
        for k in self.scalars:
            self.scalars[k] += alpha * other.scalars[k]
        return self


def _names(msg: Message) -> list[tuple[str, str]]:
    return [(p, k) for p in sorted(msg.parts) for k in sorted(msg.parts[p])]


def pack(msg: Message, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flatten the tensors (sorted by part, then name) and the scalars (sorted) into one fp32 buffer."""
    chunks = [msg.parts[p][k].detach().reshape(-1).to(device=device, dtype=WIRE_DTYPE) for p, k in _names(msg)]
    if msg.scalars:
        values = [float(msg.scalars[k]) for k in sorted(msg.scalars)]
        chunks.append(torch.tensor(values, dtype=WIRE_DTYPE, device=device))
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=WIRE_DTYPE, device=device)


def unpack(buf: torch.Tensor, like: Message, device: torch.device | str = "cpu") -> Message:
    """Inverse of `pack`: tensors shaped like `like`'s, on `device`, and the scalars by name."""
    buf = buf.to(device)
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in like.parts}
    offset = 0
    for p, k in _names(like):
        shape = like.parts[p][k].shape
        n = like.parts[p][k].numel()
        parts[p][k] = buf[offset : offset + n].view(shape)
        offset += n
    if offset + len(like.scalars) != buf.numel():
        raise ValueError(f"buffer of {buf.numel()} values does not match the message ({offset} + {len(like.scalars)})")
    values = buf[offset:].tolist()
    return Message(parts, dict(zip(sorted(like.scalars), values, strict=True)))


class Flat:
    """A message seen as one flat run of fp32 values (tensors in sorted (part, name) order, then the
    scalars), read and written in slices: what bucketed collectives move one bucket at a time.
    Writes go into the message's own tensors, in place (tensors are made contiguous first)."""

    def __init__(self, msg: Message):
        self.msg = msg
        for p, k in _names(msg):
            t = msg.parts[p][k]
            msg.parts[p][k] = t.clone() if t.is_inference() else t.contiguous()  # writable, in place
        self.views = [msg.parts[p][k].view(-1) for p, k in _names(msg)]
        self.scalar_names = sorted(msg.scalars)
        self.views.append(torch.tensor([float(msg.scalars[k]) for k in self.scalar_names], dtype=WIRE_DTYPE))
        self.starts = [0]
        for v in self.views:
            self.starts.append(self.starts[-1] + v.numel())

    @property
    def numel(self) -> int:
        return self.starts[-1]

    def buckets(self, cap: int) -> list[tuple[int, int]]:
        """[start, stop) ranges of at most `cap` values covering the message (one range when cap <= 0)."""
        if cap <= 0 or self.numel <= cap:
            return [(0, self.numel)]
        return [(a, min(a + cap, self.numel)) for a in range(0, self.numel, cap)]

    def _pieces(self, a: int, b: int) -> list[tuple[int, int, int]]:
        """(view index, start, stop) within each view that [a, b) covers."""
        out = []
        for i in range(len(self.views)):
            lo, hi = max(a, self.starts[i]), min(b, self.starts[i + 1])
            if lo < hi:
                out.append((i, lo - self.starts[i], hi - self.starts[i]))
        return out

    def read(self, a: int, b: int, device: torch.device | str) -> torch.Tensor:
        chunks = [self.views[i][s:e].to(device=device, dtype=WIRE_DTYPE) for i, s, e in self._pieces(a, b)]
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=WIRE_DTYPE, device=device)

    def write(self, a: int, b: int, buf: torch.Tensor) -> None:
        at = 0
        for i, s, e in self._pieces(a, b):
            self.views[i][s:e].copy_(buf[at : at + e - s])
            at += e - s
        if b == self.numel:  # the scalars are the run's last values
            self.msg.scalars.update(zip(self.scalar_names, self.views[-1].tolist(), strict=True))
