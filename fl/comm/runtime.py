"""The process group and this rank's place in it: `init` starts it when torchrun launched the job,
in the layout `fl.comm.placement.plan_layout` picks, with the client groups `Placement` defines
(the relay group of the client leaders; rank 0 + the leaders and each client's own group when a
client spans several ranks). Without a launcher every call answers as a world of one. With
`fl.comm.collectives`, the only code that touches `torch.distributed`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fl.comm.message import WIRE_BYTES
from fl.comm.placement import Layout, Placement, describe, plan_layout


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
    groups: Placement = field(default_factory=lambda: Placement(1))  # client groups and leaders (fl.comm.placement)

    def __post_init__(self) -> None:
        if self.groups.world_size != self.world_size:  # a Runtime built by hand (tests): its own world's groups
            k = (
                self.ranks_per_client
                if self.world_size > 1 and (self.world_size - 1) % self.ranks_per_client == 0
                else 1
            )
            self.groups = Placement(self.world_size, ranks_per_client=k)

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
        return self.groups.client_ranks

    @property
    def federation(self) -> list[int]:
        """Rank 0 and the client leaders, in group order: the ranks of the federated exchange ([0] in a
        world of one, where rank 0 is its own client)."""
        return [0, *self.groups.leaders()] if self.world_size > 1 else [0]

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
    groups = Placement(world, ranks_per_client=k)
    rt = Runtime(
        rank,
        world,
        local_rank,
        dev,
        lay,
        True,
        threads,
        None,
        describe(world, local_world, gpus, **settings),
        k,
        leader=rank,
        bucket_numel=int(bucket_mb * 2**20) // WIRE_BYTES,
        groups=groups,
    )
    _make_groups(rt, timeout)
    return rt


def _make_groups(rt: Runtime, timeout: datetime.timedelta) -> None:
    """The process groups of `rt.groups` (every rank takes part in creating each group, member or
    not, in the same order): the client leaders' own group in relay layouts; when clients span
    several ranks, rank 0 + the leaders and each client's own group."""
    lay = rt.layout
    if lay.relay:
        rt.client_group = dist.new_group(rt.groups.leaders(), backend=lay.client_backend, timeout=timeout)
    if rt.ranks_per_client == 1:
        return
    rt.fed_group = dist.new_group(rt.federation, backend=lay.world_backend, timeout=timeout)
    for g in range(rt.groups.groups):
        ranks = rt.groups.group_ranks(g)
        made = dist.new_group(ranks, backend=lay.client_backend or lay.world_backend, timeout=timeout)
        if rt.rank in ranks:
            rt.my_group, rt.group_rank, rt.leader = made, rt.rank - ranks[0], ranks[0]


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
