"""How a model computes on a device: fp32, or autocast to bf16 / fp16, and `precision=auto` made
concrete (bf16 only where the device computes it natively). Local training, evaluation and the KD
teacher all autocast through here.
"""

from __future__ import annotations

import contextlib

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 autocast runs emulated CPU kernels: 27x slower than fp32 for MiniLM-L6's training
    steps, measured on an AVX2-only AMD EPYC (2 cores).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, since torch 2.3
        return any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision=auto` made concrete for a device: bf16 where it is native, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for a precision (fp32: none); `auto` resolves per device (`resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
