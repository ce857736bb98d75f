"""The only module that touches `torch.distributed`.

It starts the process group in the layout `fl.placement.plan_layout` picks, moves `Message`s (named
parts of named tensors, plus named scalars), and returns with every collective the bytes it
moved. Everything a collective delivers is on this rank's device before anyone uses it. Without
a process group (the simulation path) every call answers as a world of one.

Wire format: one flat fp32 buffer per collective: the tensors in sorted (part, name) order, then
the scalars in sorted name order. Sender and receiver agree on the names, never on positions.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fl.message import WIRE_BYTES, WIRE_DTYPE, Message, pack, unpack
from fl.placement import Layout, describe, plan_layout, relay_group


@dataclass
class Runtime:
    """Where this process stands: rank, world, device, layout; `client_group` is set in relay layouts."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    layout: Layout = field(default_factory=lambda: Layout("cpu", "gloo", None, "cpu"))
    distributed: bool = False
    num_threads: int = 1
    client_group: object = None
    layout_lines: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def client_ranks(self) -> int:
        """Ranks that train clients: 1..N under torchrun, the single process in simulation."""
        return max(1, self.world_size - 1)

    @property
    def backend(self) -> str | None:
        """The backend of rank 0's group ('gloo' or 'nccl'), None without a process group."""
        return self.layout.world_backend if self.distributed else None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def init(
    device: str = "auto",
    num_threads: int | None = None,
    timeout_s: float = 1800.0,
    server_device: str = "auto",
    client_allreduce: str = "auto",
) -> Runtime:
    """Start the process group when launched by torchrun, in the layout plan_layout chooses."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    settings = {"device": device, "server_device": server_device, "client_allreduce": client_allreduce}
    if not launched_by_torchrun():
        lay = plan_layout(0, 1, 0, 1, gpus, **settings)
        threads = num_threads or _cores()
        torch.set_num_threads(threads)
        return Runtime(
            device=_device(lay), layout=lay, num_threads=threads, layout_lines=describe(1, 1, gpus, **settings)
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    lay = plan_layout(rank, world, local_rank, local_world, gpus, **settings)
    dev = _device(lay)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # Client ranks train at the same time and share the cores; rank 0 works while they wait.
    busy = max(1, local_world - 1) if world > 1 else 1
    threads = num_threads or (max(1, _cores() // busy) if rank > 0 else _cores())
    torch.set_num_threads(threads)
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = {"device_id": dev} if lay.world_backend == "nccl" else {}
    dist.init_process_group(lay.world_backend, rank=rank, world_size=world, timeout=timeout, **kwargs)
    group = None
    if lay.client_backend is not None:  # every rank takes part in creating a group, members or not
        group = dist.new_group(relay_group(world), backend=lay.client_backend, timeout=timeout)
    lines = describe(world, local_world, gpus, **settings)
    return Runtime(rank, world, local_rank, dev, lay, True, threads, group, lines)


def leave_together(timeout_s: float = 60.0) -> None:
    """Under torchrun, before exiting on an error found ahead of the process group (a bad config, which
    every rank finds): wait until every rank has found it. torchrun SIGTERMs the ranks still starting
    as soon as one exits, so without this only the fastest rank would exit 2. Gives up after timeout_s
    (a rank that did not fail) and never raises: the caller is on its way out."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2 or dist.is_initialized():
        return
    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - leaving anyway; the error line is what the user needs
        pass


def _device(lay: Layout) -> torch.device:
    return torch.device(lay.device)


def shutdown(clean: bool = True) -> None:
    """Tear the process group down. `clean`: wait for every rank first, since a rank that leaves
    while gloo peers still talk to it aborts ('terminate called without an active exception')."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(rt: Runtime) -> float:
    """Every rank waits for every other (rank 0 uses it to tell waiting from moving bytes).
    Returns the seconds this rank waited (0 without a process group)."""
    if not rt.distributed:
        return 0.0
    t0 = time.perf_counter()
    dist.barrier()
    return time.perf_counter() - t0


# ---- collectives -----------------------------------------------------------------------------
def _wire_device(rt: Runtime, backend: str) -> torch.device:
    """NCCL moves tensors on this rank's GPU; gloo moves CPU tensors."""
    return rt.device if backend == "nccl" else torch.device("cpu")


def broadcast(rt: Runtime, msg: Message) -> tuple[Message, int]:
    """Rank 0's message to every rank (others pass one of the same names and shapes).

    Returns (the message on this rank's device, bytes moved). In relay layouts rank 0 sends one
    buffer to rank 1, which broadcasts it among the client ranks.
    """
    if not rt.distributed:
        return msg, 0
    backend = rt.layout.world_backend
    buf = pack(msg, _wire_device(rt, backend))
    if rt.client_group is None:
        dist.broadcast(buf, src=0)
        moved = buf.numel() * WIRE_BYTES * (rt.world_size - 1)
    else:
        if rt.rank == 0:
            dist.send(buf, dst=1)
        elif rt.rank == 1:
            dist.recv(buf, src=0)
        if rt.rank > 0:
            buf = buf.to(_wire_device(rt, rt.layout.client_backend or "gloo"))
            dist.broadcast(buf, src=1, group=rt.client_group)
        moved = buf.numel() * WIRE_BYTES * (1 + rt.world_size - 2)
    return unpack(buf, msg, rt.device), moved


def reduce_sum(rt: Runtime, msg: Message) -> tuple[Message, int]:
    """Element-wise sum of every rank's message, delivered to rank 0 on its device.

    Rank 0 contributes zeros when it holds no client. Other ranks get back their input's shapes
    (contents unspecified). In relay layouts the client ranks reduce to rank 1 over their own group
    (NCCL on GPUs), and rank 1 sends the one summed buffer to rank 0.
    """
    if not rt.distributed:
        return msg, 0
    if rt.client_group is None:
        buf = pack(msg, _wire_device(rt, rt.layout.world_backend))
        dist.reduce(buf, dst=0, op=dist.ReduceOp.SUM)
        return unpack(buf, msg, rt.device), buf.numel() * WIRE_BYTES * (rt.world_size - 1)
    if rt.rank > 0:
        buf = pack(msg, _wire_device(rt, rt.layout.client_backend or "gloo"))
        dist.reduce(buf, dst=1, op=dist.ReduceOp.SUM, group=rt.client_group)
        buf = buf.cpu()
        if rt.rank == 1:
            dist.send(buf, dst=0)
    else:
        buf = pack(msg, "cpu")
        dist.recv(buf, src=1)
    return unpack(buf, msg, rt.device), buf.numel() * WIRE_BYTES * (rt.world_size - 1)


def gather_messages(
    rt: Runtime, mine: dict[int, Message], like: Message, owners: dict[int, int]
) -> tuple[dict[int, Message], int]:
    """Individual messages keyed by id (e.g. client id) to rank 0; `owners`: id -> the rank that
    holds it, known to every rank. Each rank sends its messages as rows of one padded buffer.
    Returns (every id's message on rank 0, {} elsewhere; bytes moved)."""
    if not rt.distributed:
        return mine, 0
    width = like.nbytes // WIRE_BYTES
    counts = [sum(1 for o in owners.values() if o == r) for r in range(rt.world_size)]
    rows = max(max(counts), 1)
    dev = _wire_device(rt, rt.layout.world_backend)
    buf = torch.zeros(rows, width, dtype=WIRE_DTYPE, device=dev)
    for j, key in enumerate(sorted(mine)):
        buf[j] = pack(mine[key], dev)
    out = [torch.zeros_like(buf) for _ in range(rt.world_size)] if rt.rank == 0 else None
    dist.gather(buf, out, dst=0)
    moved = buf.numel() * WIRE_BYTES * (rt.world_size - 1)
    if rt.rank != 0:
        return {}, moved
    got: dict[int, Message] = {}
    for r in range(rt.world_size):
        keys = sorted(k for k, o in owners.items() if o == r)
        for j, key in enumerate(keys):
            got[key] = unpack(out[r][j], like, rt.device)  # type: ignore[index]
    return got, moved


def is_comm_failure(err: BaseException) -> bool:
    """Whether an exception came from a collective whose peer died or went silent."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("connection closed", "connection reset", "timed out", "broken pipe", "gloo", "nccl")
    )


def broadcast_object(rt: Runtime, obj: object, src: int = 0) -> object:
    """Small Python objects (a set-up error, the first round); not payload."""
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
    """True when every rank reports ok (used to stop all ranks together on a set-up error)."""
    if not rt.distributed:
        return ok
    dev = _wire_device(rt, rt.layout.world_backend)
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0
