"""Run a function on N real gloo processes on this CPU (what torchrun would start)."""

from __future__ import annotations

import os
import socket

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    fn(rank, *args)


def spawn(fn, world: int, *args) -> None:
    """fn(rank, *args) on `world` processes; raises if any of them fails."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
