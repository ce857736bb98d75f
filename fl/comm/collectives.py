"""The collectives: they move `Message`s (named parts of named tensors, plus named scalars)
between the ranks of the process group `fl.comm.runtime` started, and return with what they moved
the bytes it took. Everything a collective delivers is on this rank's device before anyone uses it. Without
a process group (the simulation path) every call answers as a world of one.

Wire format: one flat fp32 buffer per collective: the tensors in sorted (part, name) order, then
the scalars in sorted name order. Sender and receiver agree on the names, never on positions.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from fl.comm.message import WIRE_BYTES, WIRE_DTYPE, Flat, Message, pack, unpack
from fl.comm.runtime import Runtime


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
        moved += buf.numel() * WIRE_BYTES * (rt.world_size - 1)  # every leader, then the rest of its group
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
    senders = rt.world_size - 1 if everyone else len(rt.federation) - 1
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
    members = rt.federation
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
    members = rt.federation
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
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=ids, process_group=rt.my_group, broadcast_buffers=False
    )


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
