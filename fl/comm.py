"""The only module that touches `torch.distributed`.

It owns process-group start-up (NCCL when every local rank has a GPU, gloo otherwise), thread
budgets, the flat-buffer broadcast and sum-reduce that move trainable state, byte counters, and
world / rank helpers that also answer sensibly when no process group exists (the simulation path).

Wire format: the tensors of a `dict[str, Tensor]` in sorted-name order, flattened and concatenated
into one fp32 vector, followed by any float scalars; one collective per direction per round.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fl.config import ConfigError

WIRE_DTYPE = torch.float32


@dataclass
class Runtime:
    """Where this process stands: rank, world, device and backend (None without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    num_threads: int = 1

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def client_ranks(self) -> int:
        """Ranks that train clients: 1..N under torchrun, the single process in simulation."""
        return max(1, self.world_size - 1)


@dataclass
class ByteCounter:
    """Bytes that crossed the wire in each direction, as seen by rank 0."""

    up: int = 0
    down: int = 0

    def take(self) -> tuple[int, int]:
        out = (self.up, self.down)
        self.up = self.down = 0
        return out


bytes_moved = ByteCounter()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def init(device: str = "auto", num_threads: int | None = None, timeout_s: float = 1800.0) -> Runtime:
    """Start the process group when launched by torchrun; pick the device, backend and threads."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available; use device=auto or device=cpu")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not launched_by_torchrun():
        dev = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        threads = num_threads or _cores()
        torch.set_num_threads(threads)
        return Runtime(device=dev, num_threads=threads)

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if use_cuda:
        # NCCL needs a GPU of its own per rank; with fewer GPUs, ranks share them over gloo.
        backend = "nccl" if torch.cuda.device_count() >= local_world else "gloo"
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        backend, dev = "gloo", torch.device("cpu")
    # Client ranks train at the same time and share the cores; rank 0 works while they wait.
    busy = max(1, local_world - 1) if world > 1 else 1
    threads = num_threads or (max(1, _cores() // busy) if rank > 0 else _cores())
    torch.set_num_threads(threads)
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s), **kwargs
    )
    return Runtime(rank, world, local_rank, dev, backend, threads)


def shutdown(clean: bool = True) -> None:
    """Tear the process group down. `clean`: wait for every rank first, since a rank that leaves
    while gloo peers still talk to it aborts ('terminate called without an active exception')."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


# ---- packing ---------------------------------------------------------------------------------
def pack(state: dict[str, torch.Tensor], scalars: Sequence[float] = ()) -> torch.Tensor:
    """Flatten tensors (sorted by name) and scalars into one 1-D fp32 buffer."""
    parts = [state[k].detach().reshape(-1).to(WIRE_DTYPE) for k in sorted(state)]
    if scalars:
        parts.append(torch.tensor(list(scalars), dtype=WIRE_DTYPE, device=parts[0].device if parts else None))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=WIRE_DTYPE)


def unpack(
    buf: torch.Tensor, like: dict[str, torch.Tensor], num_scalars: int = 0
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Inverse of `pack`: tensors shaped like `like` (fp32 views of `buf`) and the trailing scalars."""
    out, offset = {}, 0
    for k in sorted(like):
        n = like[k].numel()
        out[k] = buf[offset : offset + n].view(like[k].shape)
        offset += n
    if offset + num_scalars != buf.numel():
        raise ValueError(f"buffer of {buf.numel()} values does not match the state ({offset} + {num_scalars})")
    return out, buf[offset:].tolist()


def packed_nbytes(like: dict[str, torch.Tensor], num_scalars: int = 0) -> int:
    """Bytes of one packed buffer for this state (what one rank sends in one collective)."""
    numel = sum(t.numel() for t in like.values()) + num_scalars
    return numel * torch.tensor([], dtype=WIRE_DTYPE).element_size()


# ---- collectives -----------------------------------------------------------------------------
def _wire(rt: Runtime, buf: torch.Tensor) -> torch.Tensor:
    """NCCL wants tensors on this rank's GPU; gloo is happiest with CPU tensors."""
    return buf.to(rt.device) if rt.backend == "nccl" else buf.cpu()


def broadcast_state(
    rt: Runtime, state: dict[str, torch.Tensor], scalars: Sequence[float] = (), src: int = 0
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Send rank `src`'s state (+ scalars) to every rank; others pass a state of the same shapes."""
    if not rt.distributed:
        return state, list(scalars)
    buf = _wire(rt, pack(state, scalars))
    dist.broadcast(buf, src=src)
    if rt.rank == src:
        bytes_moved.down += buf.numel() * buf.element_size() * (rt.world_size - 1)
    return unpack(buf, state, len(scalars))


def reduce_sum(
    rt: Runtime, state: dict[str, torch.Tensor], scalars: Sequence[float] = (), dst: int = 0
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Element-wise sum of every rank's state (+ scalars), delivered to `dst`.

    Rank `dst` passes zeros of the right shapes when it holds no client. Other ranks get back
    their own input, unchanged in meaning.
    """
    if not rt.distributed:
        return state, list(scalars)
    buf = _wire(rt, pack(state, scalars))
    dist.reduce(buf, dst=dst, op=dist.ReduceOp.SUM)
    if rt.rank == dst:
        bytes_moved.up += buf.numel() * buf.element_size() * (rt.world_size - 1)
    return unpack(buf, state, len(scalars))


def is_comm_failure(err: BaseException) -> bool:
    """Whether an exception came from a collective whose peer died or went silent."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("connection closed", "connection reset", "timed out", "broken pipe", "gloo")
    )


def broadcast_object(rt: Runtime, obj: object, src: int = 0) -> object:
    """Small Python objects (round plans, stop signals); not counted as payload bytes."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(rt: Runtime, obj: object, dst: int = 0) -> list[object] | None:
    """Every rank's small Python object, as a list on `dst` (None elsewhere)."""
    if not rt.distributed:
        return [obj]
    out: list[object] | None = [None] * rt.world_size if rt.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_ok(rt: Runtime, ok: bool) -> bool:
    """True when every rank reports ok (used to stop all ranks together on a setup error)."""
    if not rt.distributed:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=rt.device if rt.backend == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0
