"""Placement, pure: which rank hosts which client, which test rows each rank scores, and which
device and backends each rank uses. No tensors and no process group, so every case is unit-tested
on a CPU; `fl.comm` takes its groups from here.

Clients: client c lives on client rank 1 + c % (world - 1), round-robin; in a world of one (the
simulation) rank 0 hosts every client. A rank trains its clients one after another. The test set
is split over the client ranks, every (world - 1)-th row.

Devices and backends (`plan_layout`), a function of (rank, world size, local world size, GPUs
visible, device setting). Rank 0 (the aggregator) lives on node 0 as local rank 0; the other ranks
are client ranks. torchrun starts the same number of processes on every node.

- cpu: device=cpu, or no GPU. Every rank on the CPU; gloo carries everything.
- own: G >= L, every rank owns a GPU (rank on GPU local_rank). NCCL carries everything.
- clients-own: every client rank owns a GPU but rank 0 does not fit (e.g. 4 GPUs, 5 ranks), or
  rank 0 computes on the CPU (server_device=cpu). Client rank k on GPU k - 1 (node 0) or k (other
  nodes); rank 0 on GPU 0 (shared) or the CPU. The client ranks reduce and broadcast among
  themselves over NCCL; rank 1 relays one buffer each way to rank 0 over gloo.
- shared: fewer GPUs than the client ranks of a node. Rank on GPU local_rank % G; gloo carries
  everything over CPU copies.

NCCL forbids two ranks of one communicator on one GPU, which is why rank 0 stays out of the
client ranks' NCCL group when it shares GPU 0 with client rank 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Where the clients of a run live: a pure function of the world size, the client count and the
    ranks each client spans (`ranks_per_client`, k).

    Under torchrun the client ranks 1..W-1 form G = (W - 1) / k groups of k contiguous ranks
    (torchrun numbers ranks node by node, so a group straddles two nodes only when a node's client
    ranks do not split into whole groups). Group g's leader is its first rank; client c lives on
    group c % G, whose ranks train it together (data parallel), and only its leader talks to rank 0.
    In simulation (a world of one) rank 0 hosts every client.
    """

    world_size: int
    num_clients: int = 0  # 0: only the groups are asked (the process group's set-up)
    ranks_per_client: int = 1

    @property
    def client_ranks(self) -> int:
        """Ranks that train clients: 1..N under torchrun, the single process in simulation."""
        return max(1, self.world_size - 1)

    @property
    def groups(self) -> int:
        """Client groups (1 in simulation)."""
        return 1 if self.world_size == 1 else (self.world_size - 1) // self.ranks_per_client

    def check(self) -> None:
        """The client ranks split into whole groups and every group hosts a client (ValueError naming a
        launch that fits)."""
        k = self.ranks_per_client
        if self.world_size > 1 and (self.world_size - 1) % k:
            raise ValueError(
                f"torchrun started {self.world_size - 1} client ranks, which do not split into clients of "
                f"ranks_per_client={k}; launch with --nproc_per_node=1+N*{k} (e.g. {1 + k}, {1 + 2 * k})"
            )
        if self.groups > self.num_clients:
            fits = self.num_clients * k + 1
            raise ValueError(
                f"torchrun started {self.world_size - 1} client ranks for num_clients={self.num_clients}"
                + (f" of {k} ranks each" if k > 1 else "")
                + f"; launch with --nproc_per_node={fits} or fewer, or raise num_clients"
            )

    def group_ranks(self, g: int) -> list[int]:
        if self.world_size == 1:
            return [0]
        k = self.ranks_per_client
        return list(range(1 + g * k, 1 + (g + 1) * k))

    def group_of(self, rank: int) -> int | None:
        """The client group of a rank (None for the aggregator of a torchrun job)."""
        if self.world_size == 1:
            return 0
        return None if rank == 0 else (rank - 1) // self.ranks_per_client

    def leaders(self) -> list[int]:
        """Each client group's first rank, the one that talks to rank 0 ([0] in simulation)."""
        return [self.group_ranks(g)[0] for g in range(self.groups)]

    def owner(self, client: int) -> int:
        """The leader of the group that trains client c; rank 0 in simulation."""
        return 0 if self.world_size == 1 else self.group_ranks(client % self.groups)[0]

    def owners(self) -> dict[int, int]:
        return {c: self.owner(c) for c in range(self.num_clients)}

    def clients_of(self, rank: int) -> list[int]:
        """The clients a rank trains (every rank of a group trains the group's clients)."""
        g = self.group_of(rank)
        if g is None:
            return []
        return [c for c in range(self.num_clients) if self.world_size == 1 or c % self.groups == g]

    def eval_rows(self, rank: int, num_rows: int) -> list[int]:
        """Test rows rank scores: every (world-1)-th row from rank-1 on client ranks, all in simulation."""
        if self.world_size == 1:
            return list(range(num_rows))
        if rank == 0:
            return []
        return list(range(rank - 1, num_rows, self.world_size - 1))

    def client_groups(self) -> list[dict[str, list[int] | int]]:
        """For the record: each group's ranks, its leader and the clients it trains."""
        return [
            {
                "ranks": self.group_ranks(g),
                "leader": self.group_ranks(g)[0],
                "clients": [c for c in range(self.num_clients) if self.world_size == 1 or c % self.groups == g],
            }
            for g in range(self.groups)
        ]


@dataclass(frozen=True)
class Layout:
    """Where one rank computes and how its traffic travels."""

    device: str  # "cpu" or "cuda:k"
    world_backend: str  # backend of the group that joins rank 0 and the client ranks
    client_backend: str | None  # a separate group of the client ranks (all-reduce), or None
    case: str  # cpu | own | clients-own | shared

    @property
    def relay(self) -> bool:
        """Client traffic is summed among the client ranks, then rank 1 relays it to rank 0."""
        return self.client_backend is not None


def plan_layout(
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    gpus: int,
    device: str = "auto",
    server_device: str = "auto",
    client_allreduce: str = "auto",
) -> Layout:
    """The layout of one rank.

    device: auto | cpu | cuda. server_device: auto | cpu (rank 0 computes on the CPU; it then
    leaves NCCL to the client ranks). client_allreduce: auto (a client group where the client
    ranks own GPUs and rank 0 cannot join their NCCL group) | true (always, gloo where there is no
    GPU: the relay code path on a CPU, for tests and benchmarks) | false (never).
    """
    if device == "cuda" and gpus < 1:
        raise ValueError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    force = client_allreduce == "true" and world_size > 2
    if device == "cpu" or gpus < 1:
        return Layout("cpu", "gloo", "gloo" if force else None, "cpu")
    if world_size == 1:  # one process: the simulation path on the first GPU
        return Layout("cpu" if server_device == "cpu" else "cuda:0", "gloo", None, "own")
    nodes = max(1, world_size // max(local_world_size, 1))
    node0 = rank < local_world_size  # torchrun numbers ranks node by node; rank 0 is on node 0
    most_clients = local_world_size if nodes > 1 else local_world_size - 1  # client ranks on the fullest node
    clients_own = gpus >= most_clients
    server_owns = gpus >= local_world_size and server_device != "cpu"
    server_dev = "cpu" if server_device == "cpu" else "cuda:0"
    if clients_own and server_owns and client_allreduce != "true":
        return Layout(f"cuda:{local_rank}", "nccl", None, "own")
    if clients_own and client_allreduce != "false":
        if rank == 0:
            return Layout(server_dev, "gloo", "nccl", "clients-own")
        gpu = local_rank - 1 if node0 else local_rank
        return Layout(f"cuda:{gpu}", "gloo", "nccl", "clients-own")
    dev = server_dev if rank == 0 else f"cuda:{local_rank % gpus}"
    return Layout(dev, "gloo", "gloo" if force else None, "shared")


def describe(world_size: int, local_world_size: int, gpus: int, **settings: str) -> list[str]:
    """One line per rank of node 0 (what rank 0 prints once at start)."""
    lines = []
    for r in range(min(world_size, local_world_size)):
        lay = plan_layout(r, world_size, r, local_world_size, gpus, **settings)
        role = "aggregator" if r == 0 else "client rank"
        among = f", client ranks over {lay.client_backend}" if lay.client_backend else ""
        lines.append(f"rank {r} ({role}): {lay.device}, {lay.world_backend} to rank 0{among} [{lay.case}]")
    return lines
