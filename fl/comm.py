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

from fl.message import WIRE_BYTES, WIRE_DTYPE, Flat, Message, pack, unpack
from fl.placement import Layout, describe, plan_layout, relay_group


@dataclass
class Runtime:
    """Where this process stands: rank, world, device, layout, and its groups: `client_group` (the
    client leaders, in relay layouts), and when clients span several ranks `fed_group` (rank 0 and
    the leaders) and `my_group` (this rank's client group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    layout: Layout = field(default_factory=lambda: Layout("cpu", "gloo", None, "cpu"))
    distributed: bool = False
    num_threads: int = 1
    client_group: object = None
    layout_lines: list[str] = field(default_factory=list)
    ranks_per_client: int = 1
    fed_group: object = None
    my_group: object = None
    group_rank: int = 0  # this rank's place in its client group
    leader: int = 0  # the global rank of this rank's group leader
    bucket_numel: int = 0  # values a collective moves at once (0: a whole message)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_leader(self) -> bool:
        """Rank 0 and each client group's first rank: the ranks that take part in the federated exchange."""
        return self.rank == self.leader

    @property
    def group_size(self) -> int:
        return self.ranks_per_client if self.my_group is not None else 1

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
    ranks_per_client: int = 1,
    bucket_mb: float = 0.0,
) -> Runtime:
    """Start the process group when launched by torchrun, in the layout plan_layout chooses, with the
    groups of clients that span `ranks_per_client` ranks."""
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
    k = ranks_per_client if world > 1 and (world - 1) % ranks_per_client == 0 else 1  # else set-up refuses
    group = None
    if lay.client_backend is not None:  # every rank takes part in creating a group, members or not
        group = dist.new_group(relay_group(world, k), backend=lay.client_backend, timeout=timeout)
    lines = describe(world, local_world, gpus, **settings)
    rt = Runtime(rank, world, local_rank, dev, lay, True, threads, group, lines, k, leader=rank,
                 bucket_numel=int(bucket_mb * 2**20) // WIRE_BYTES)  # fmt: skip
    if k > 1:  # rank 0 + the leaders; then each client's own group (the same calls, in order, on every rank)
        rt.fed_group = dist.new_group([0, *range(1, world, k)], backend=lay.world_backend, timeout=timeout)
        for first in range(1, world, k):
            ranks = list(range(first, first + k))
            made = dist.new_group(ranks, backend=lay.client_backend or lay.world_backend, timeout=timeout)
            if rank in ranks:
                rt.my_group, rt.group_rank, rt.leader = made, rank - first, first
    return rt


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
    """Rank 0's message to every rank (others pass one of the same names and shapes), written into
    `msg`'s own tensors, bucket by bucket (`rt.bucket_numel` values at most: extra memory is one
    bucket, not one message). Returns (msg, bytes moved). In relay layouts rank 0 sends each bucket
    to rank 1, which broadcasts it among the client leaders; a leader hands it on to its client's ranks."""
    if not rt.distributed:
        return msg, 0
    flat, moved = Flat(msg), 0
    for a, b in flat.buckets(rt.bucket_numel):
        buf = _broadcast_buf(rt, flat.read(a, b, _wire_device(rt, rt.layout.world_backend)))
        if rt.rank != 0:  # the sender's own values are already in place
            flat.write(a, b, buf)
        groups = (rt.world_size - 1) // rt.ranks_per_client
        moved += buf.numel() * WIRE_BYTES * (groups + groups * (rt.ranks_per_client - 1))
    return msg, moved


def _broadcast_buf(rt: Runtime, buf: torch.Tensor) -> torch.Tensor:
    if rt.client_group is None:
        if rt.is_leader:  # every rank when clients are single ranks (fed_group None: the world)
            dist.broadcast(buf, src=0, group=rt.fed_group)
    else:
        if rt.rank == 0:
            dist.send(buf, dst=1)
        elif rt.rank == 1:
            dist.recv(buf, src=0)
        if rt.rank > 0 and rt.is_leader:
            buf = buf.to(_wire_device(rt, rt.layout.client_backend or "gloo"))
            dist.broadcast(buf, src=1, group=rt.client_group)
    if rt.my_group is not None:  # the leader hands it on to the other ranks of its client
        buf = buf.to(_wire_device(rt, rt.layout.client_backend or rt.layout.world_backend))
        dist.broadcast(buf, src=rt.leader, group=rt.my_group)
    return buf


def reduce_sum(rt: Runtime, msg: Message, everyone: bool = False) -> tuple[Message, int]:
    """Element-wise sum of the client leaders' messages (`everyone`: of every rank's), written into
    rank 0's `msg`, bucket by bucket (extra memory: one bucket a rank, one per sender on rank 0).

    Rank 0 gathers each bucket and adds the ranks' values in rank order, so the sum is the same bit
    for bit whatever the bucket size (a tree or ring reduce adds in an order that depends on the
    buffer). Rank 0 contributes zeros when it holds no client. Other ranks' messages are left
    unspecified; a rank that is not a leader takes no part (the other ranks of a client hold what
    its leader sends). In relay layouts the leaders reduce to rank 1 over their own group (NCCL on
    GPUs), and rank 1 sends each summed bucket to rank 0. `everyone` covers the whole
    world (small messages: the evaluation's sums).
    """
    if not rt.distributed or not (everyone or rt.is_leader):
        return msg, 0
    flat, moved = Flat(msg), 0
    senders = rt.world_size - 1 if everyone else (rt.world_size - 1) // rt.ranks_per_client
    for a, b in flat.buckets(rt.bucket_numel):
        if everyone or rt.client_group is None:
            group, size = (None, rt.world_size) if everyone else (rt.fed_group, 1 + senders)
            buf = _ordered_sum(rt, flat.read(a, b, _wire_device(rt, rt.layout.world_backend)), group, size, 0)
        elif rt.rank > 0:
            buf = flat.read(a, b, _wire_device(rt, rt.layout.client_backend or "gloo"))
            buf = _ordered_sum(rt, buf, rt.client_group, senders, 1).cpu()
            if rt.rank == 1:
                dist.send(buf, dst=0)
        else:
            buf = torch.zeros(b - a, dtype=WIRE_DTYPE)
            dist.recv(buf, src=1)
        if rt.rank == 0:
            flat.write(a, b, buf)
        moved += (b - a) * WIRE_BYTES * senders
    return msg, moved


def _ordered_sum(rt: Runtime, buf: torch.Tensor, group: object, members: int, root: int) -> torch.Tensor:
    """On `root`: the sum of the group's buffers, added in rank order (elsewhere: the own buffer)."""
    got = [torch.zeros_like(buf) for _ in range(members)] if rt.rank == root else None
    dist.gather(buf, got, dst=root, group=group)
    if rt.rank != root:
        return buf
    total = got[0].clone()  # type: ignore[index]
    for other in got[1:]:  # type: ignore[index]
        total.add_(other)
    return total


def broadcast_bytes(rt: Runtime, buf: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rank 0's byte payload (uint8, a size every rank knows) to every rank; (payload, bytes moved)."""
    if not rt.distributed:
        return buf, 0
    out = _broadcast_buf(rt, buf.to(_wire_device(rt, rt.layout.world_backend)))
    return out.cpu(), buf.numel() * (rt.world_size - 1)


def gather_messages(
    rt: Runtime, mine: dict[int, Message], like: Message, owners: dict[int, int]
) -> tuple[dict[int, Message], int]:
    """Individual messages keyed by id (e.g. client id) to rank 0; `owners`: id -> the rank that
    holds it, known to every rank. Each rank sends its messages as rows of one padded buffer.
    Returns (every id's message on rank 0, {} elsewhere; bytes moved)."""
    if not rt.distributed or not rt.is_leader:  # only the leaders hold what their clients send
        return (mine, 0) if not rt.distributed else ({}, 0)
    members = [0, *range(1, rt.world_size, rt.ranks_per_client)]  # rank 0 and the leaders, in group order
    width = like.nbytes // WIRE_BYTES
    counts = [sum(1 for o in owners.values() if o == r) for r in members]
    rows = max(max(counts), 1)
    dev = _wire_device(rt, rt.layout.world_backend)
    buf = torch.zeros(rows, width, dtype=WIRE_DTYPE, device=dev)
    for j, key in enumerate(sorted(mine)):
        buf[j] = pack(mine[key], dev)
    out = [torch.zeros_like(buf) for _ in members] if rt.rank == 0 else None
    dist.gather(buf, out, dst=0, group=rt.fed_group)
    moved = buf.numel() * WIRE_BYTES * (len(members) - 1)
    if rt.rank != 0:
        return {}, moved
    got: dict[int, Message] = {}
    for i, r in enumerate(members):
        keys = sorted(k for k, o in owners.items() if o == r)
        for j, key in enumerate(keys):
            got[key] = unpack(out[i][j], like, rt.device)  # type: ignore[index]
    return got, moved


def gather_bytes(
    rt: Runtime, mine: dict[int, torch.Tensor], size: int, owners: dict[int, int]
) -> tuple[dict[int, torch.Tensor], int]:
    """Byte payloads keyed by id (each `size` bytes, uint8) to rank 0, from the rank `owners` names for
    each; (every id's payload on rank 0, {} elsewhere; bytes moved: the payloads that exist)."""
    if not rt.distributed:
        return mine, 0
    if not rt.is_leader:
        return {}, 0
    members = [0, *range(1, rt.world_size, rt.ranks_per_client)]
    counts = [sum(1 for o in owners.values() if o == r) for r in members]
    dev = _wire_device(rt, rt.layout.world_backend)
    buf = torch.zeros(max(max(counts), 1), size, dtype=torch.uint8, device=dev)
    for j, key in enumerate(sorted(mine)):
        buf[j] = mine[key].to(dev)
    out = [torch.zeros_like(buf) for _ in members] if rt.rank == 0 else None
    dist.gather(buf, out, dst=0, group=rt.fed_group)
    moved = size * sum(counts[1:])
    if rt.rank != 0:
        return {}, moved
    got = {}
    for i, r in enumerate(members):
        for j, key in enumerate(sorted(k for k, o in owners.items() if o == r)):
            got[key] = out[i][j].cpu()  # type: ignore[index]
    return got, moved


def data_parallel(rt: Runtime, model: torch.nn.Module) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel over this rank's client group (gradients averaged
    across the client's ranks in backward); the model itself when the client is one rank."""
    if rt.my_group is None:
        return model
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=rt.my_group,
                                                     broadcast_buffers=False)  # fmt: skip


def group_sum(rt: Runtime, values: list[float]) -> list[float]:
    """The sum over this rank's client group of a few numbers (training statistics); as they are alone."""
    if rt.my_group is None:
        return values
    backend = rt.layout.client_backend or rt.layout.world_backend
    t = torch.tensor(values, dtype=torch.float64, device=_wire_device(rt, backend))
    dist.all_reduce(t, group=rt.my_group)
    return t.tolist()


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
