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
        parts = {p: {k: torch.zeros(v.shape, dtype=WIRE_DTYPE, device=v.device) for k, v in t.items()}
                 for p, t in self.parts.items()}  # fmt: skip
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
