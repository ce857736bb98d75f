"""Compressed updates, as pure functions over name-keyed tensors: what a message costs on the wire
and how it comes back. No process group; `fl.comm.transport` moves the bytes.

- bf16: every value rounded to bfloat16 (round to nearest even): 2 bytes a value.
- int8 (QSGD, Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
  Encoding"): per block of `INT8_BLOCK` values a scale max|x| / 127 (fp32), and each value rounded
  stochastically to an integer in [-127, 127] (unbiased: E[decode] = x), seeded per (run, round,
  sender, tensor): 1 byte a value + 4 bytes a block.
- topk (Stich et al. 2018, "Sparsified SGD with Memory"; Karimireddy et al. 2019, "Error Feedback
  Fixes SignSGD"): per tensor the ceil(ratio * n) values of largest magnitude, as int32 indices and
  fp32 values: 8 bytes a kept value. What is left out is kept as the sender's residual and added to
  its next message (error feedback), so nothing is lost, only delayed: sent + residual = the true sum.

A payload is one flat uint8 tensor: the tensors in sorted (part, name) order, each encoded at a size
both sides know from the names and shapes alone, then the message's scalars (fp32, sorted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fl.comm.message import Message

INT8_BLOCK = 256
CODECS = ("none", "bf16", "int8", "topk")


@dataclass(frozen=True)
class Codec:
    kind: str  # bf16 | int8 | topk
    topk_ratio: float = 0.1

    def kept(self, n: int) -> int:
        return max(1, math.ceil(self.topk_ratio * n)) if n else 0

    def tensor_bytes(self, n: int) -> int:
        """Bytes of one tensor of n values on the wire."""
        if self.kind == "bf16":
            return 2 * n
        if self.kind == "int8":
            return n + 4 * math.ceil(n / INT8_BLOCK)
        return 8 * self.kept(n)

    def message_bytes(self, like: Message) -> int:
        return sum(self.tensor_bytes(t.numel()) for _, t in _tensors(like)) + 4 * len(like.scalars)

    # ---- one tensor -----------------------------------------------------------------------------
    def encode_tensor(self, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
        """x (any shape) as the uint8 chunks of its encoding."""
        flat = x.detach().reshape(-1).float().cpu()
        if self.kind == "bf16":
            return [_bytes(flat.to(torch.bfloat16))]
        if self.kind == "int8":
            q, scale = quantize_int8(flat, seed)
            return [_bytes(q), _bytes(scale)]
        idx = flat.abs().topk(self.kept(flat.numel()), sorted=False).indices.sort().values
        return [_bytes(idx.to(torch.int32)), _bytes(flat[idx])]

    def decode_tensor(self, raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The fp32 tensor shaped like `like` from its bytes."""
        n = like.numel()
        raw = raw.clone()  # its own storage: a slice of a payload need not be aligned for a wider dtype
        if self.kind == "bf16":
            return raw.view(torch.bfloat16).float().reshape(like.shape)
        if self.kind == "int8":
            blocks = math.ceil(n / INT8_BLOCK)
            q, scale = raw[:n].view(torch.int8), raw[n : n + 4 * blocks].clone().view(torch.float32)
            return dequantize_int8(q, scale, n).reshape(like.shape)
        k = self.kept(n)
        idx, vals = raw[: 4 * k].view(torch.int32).long(), raw[4 * k : 8 * k].clone().view(torch.float32)
        out = torch.zeros(n)
        out[idx] = vals
        return out.reshape(like.shape)

    # ---- a message ------------------------------------------------------------------------------
    def encode(self, msg: Message, seed: int) -> torch.Tensor:
        chunks = [c for i, (_, t) in enumerate(_tensors(msg)) for c in self.encode_tensor(t, seed * 1_009 + i)]
        values = [float(msg.scalars[k]) for k in sorted(msg.scalars)]
        chunks.append(_bytes(torch.tensor(values, dtype=torch.float32)))
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)

    def decode(self, raw: torch.Tensor, like: Message, device: torch.device | str = "cpu") -> Message:
        raw = raw.cpu()
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in like.parts}
        offset = 0
        for (p, k), t in _tensors(like):
            size = self.tensor_bytes(t.numel())
            parts[p][k] = self.decode_tensor(raw[offset : offset + size], t).to(device)
            offset += size
        scalars = raw[offset:].clone().view(torch.float32).tolist()
        return Message(parts, dict(zip(sorted(like.scalars), scalars, strict=True)))


def _tensors(msg: Message) -> list[tuple[tuple[str, str], torch.Tensor]]:
    return [((p, k), msg.parts[p][k]) for p in sorted(msg.parts) for k in sorted(msg.parts[p])]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).reshape(-1)


def quantize_int8(flat: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scale per block): stochastic rounding of x / scale, scale = max|x| / 127."""
    n = flat.numel()
    blocks = math.ceil(n / INT8_BLOCK)
    padded = torch.zeros(blocks * INT8_BLOCK)
    padded[:n] = flat
    padded = padded.view(blocks, INT8_BLOCK)
    scale = padded.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = padded / safe[:, None]
    low = y.floor()
    noise = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed % (2**63 - 1)))
    q = (low + (noise < (y - low)).float()).clamp(-127, 127)  # up with probability (y - floor y)
    return q.to(torch.int8).reshape(-1)[:n], scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    blocks = scale.numel()
    padded = torch.zeros(blocks * INT8_BLOCK)
    padded[:n] = q.float()
    return (padded.view(blocks, INT8_BLOCK) * scale[:, None]).reshape(-1)[:n]
