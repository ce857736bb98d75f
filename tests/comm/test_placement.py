"""Placement on a CPU: which rank hosts which client and scores which test rows, and the process
layout (devices and backends per rank) for every layout of issue 9."""

import pytest

from fl.comm.placement import Layout, Placement, describe, plan_layout


def test_clients_live_round_robin_on_the_client_ranks():
    assert Placement(1, 3).clients_of(0) == [0, 1, 2]  # simulation: rank 0 hosts everyone
    assert Placement(3, 5).clients_of(0) == []
    assert Placement(3, 5).clients_of(1) == [0, 2, 4] and Placement(3, 5).clients_of(2) == [1, 3]
    assert Placement(3, 5).owners() == {0: 1, 1: 2, 2: 1, 3: 2, 4: 1} and Placement(3, 5).client_ranks == 2


def test_eval_rows_split_the_test_set_over_client_ranks():
    assert Placement(1, 2).eval_rows(0, 5) == [0, 1, 2, 3, 4]  # simulation: the one process scores everything
    assert Placement(3, 2).eval_rows(0, 5) == []  # rank 0 aggregates while the client ranks score
    assert Placement(3, 2).eval_rows(1, 5) == [0, 2, 4] and Placement(3, 2).eval_rows(2, 5) == [1, 3]
    assert sorted(sum((Placement(4, 3).eval_rows(r, 10) for r in range(4)), [])) == list(range(10))


def test_more_client_ranks_than_clients_is_an_error_naming_the_launch():
    with pytest.raises(ValueError, match="--nproc_per_node=3"):
        Placement(4, 2).check()
    Placement(3, 2).check()


def layouts(world: int, local: int, gpus: int, **kw) -> list[Layout]:
    return [plan_layout(r, world, r % local, local, gpus, **kw) for r in range(world)]


def test_one_gpu_three_ranks_share_it_over_gloo():
    got = layouts(3, 3, 1)
    assert [x.device for x in got] == ["cuda:0"] * 3
    assert {x.world_backend for x in got} == {"gloo"} and all(x.client_backend is None for x in got)
    assert got[0].case == "shared"


def test_four_gpus_four_ranks_every_rank_owns_one_over_nccl():
    got = layouts(4, 4, 4)
    assert [x.device for x in got] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert {x.world_backend for x in got} == {"nccl"} and {x.case for x in got} == {"own"}


def test_four_gpus_five_ranks_clients_own_gpus_and_sum_over_nccl():
    """recipes/run.sh 4 on 4 GPUs: the 4 client ranks own GPUs 0..3; rank 0 shares GPU 0 but stays
    out of their NCCL group (NCCL forbids two ranks of one communicator on one GPU)."""
    got = layouts(5, 5, 4)
    assert [x.device for x in got] == ["cuda:0", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert all(x.client_backend == "nccl" and x.world_backend == "gloo" and x.relay for x in got)
    client_gpus = [x.device for x in got[1:]]
    assert len(set(client_gpus)) == len(client_gpus)  # no two NCCL members on one GPU


def test_four_gpus_nine_ranks_share_over_gloo():
    got = layouts(9, 9, 4)
    assert [x.device for x in got] == [f"cuda:{r % 4}" for r in range(9)]
    assert {x.world_backend for x in got} == {"gloo"} and not any(x.relay for x in got)


def test_two_nodes_of_four_gpus():
    own = layouts(8, 4, 4)  # 4 ranks a node: every rank owns a GPU
    assert [x.device for x in own] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"] * 2
    assert {x.world_backend for x in own} == {"nccl"}
    shared = layouts(10, 5, 4)  # 5 a node: node 1 has 5 client ranks for 4 GPUs
    assert {x.case for x in shared} == {"shared"} and {x.world_backend for x in shared} == {"gloo"}


def test_cpu_on_a_gpu_machine():
    got = layouts(3, 3, 8, device="cpu")
    assert {x.device for x in got} == {"cpu"} and {x.world_backend for x in got} == {"gloo"}


def test_nccl_wherever_every_client_rank_owns_a_gpu():
    for world in range(2, 10):
        for gpus in range(1, 9):
            got = layouts(world, world, gpus)
            clients_own = gpus >= world - 1
            assert any(x.client_backend == "nccl" or x.world_backend == "nccl" for x in got) == clients_own


def test_one_gpu_one_client_rank_runs_the_nccl_path_with_rank0_on_cpu():
    """The layout a one-GPU machine can test NCCL with: the only client rank owns the GPU."""
    got = layouts(2, 2, 1, server_device="cpu")
    assert got[0].device == "cpu" and got[1].device == "cuda:0" and got[1].client_backend == "nccl"


def test_forced_relay_on_cpu_and_errors():
    assert all(x.relay and x.client_backend == "gloo" for x in layouts(3, 3, 0, client_allreduce="true"))
    assert not any(x.relay for x in layouts(5, 5, 4, client_allreduce="false"))
    with pytest.raises(ValueError, match="no CUDA device"):
        plan_layout(0, 1, 0, 1, 0, device="cuda")
    assert describe(3, 3, 1)[0].startswith("rank 0 (aggregator): cuda:0, gloo")


def test_clients_of_two_ranks_on_one_node_of_five_processes():
    p = Placement(5, 4, ranks_per_client=2)
    p.check()
    assert p.groups == 2 and [p.group_ranks(g) for g in range(2)] == [[1, 2], [3, 4]]
    assert p.leaders() == [1, 3] and p.group_of(2) == 0 and p.group_ranks(0) == [1, 2]
    assert p.owners() == {0: 1, 1: 3, 2: 1, 3: 3}  # the leader answers for its group's clients
    assert p.clients_of(2) == p.clients_of(1) == [0, 2] and p.clients_of(0) == []
    assert p.client_groups() == [
        {"ranks": [1, 2], "leader": 1, "clients": [0, 2]},
        {"ranks": [3, 4], "leader": 3, "clients": [1, 3]},
    ]
    assert sorted(sum((p.eval_rows(r, 10) for r in range(5)), [])) == list(range(10))  # every rank scores


def test_groups_straddle_a_node_only_when_they_must():
    """2 nodes x 8 processes: node 0 holds rank 0 and client ranks 1..7, node 1 ranks 8..15."""
    node = lambda r: r // 8  # noqa: E731
    p = Placement(16, 3, ranks_per_client=5)  # 7 client ranks on node 0 cannot make two groups of 5
    groups = [p.group_ranks(g) for g in range(p.groups)]
    assert groups == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    assert [len({node(r) for r in g}) for g in groups] == [1, 2, 1]  # one must: 6, 7 are left on node 0
    q = Placement(16, 5, ranks_per_client=3)  # 7 + 8 client ranks: [1-3], [4-6] on node 0, [7-9] must straddle
    assert [len({node(r) for r in q.group_ranks(g)}) for g in range(q.groups)] == [1, 1, 2, 1, 1]


def test_ranks_that_do_not_split_into_clients_are_refused_naming_a_launch():
    with pytest.raises(
        ValueError,
        match=r"do not split into clients of ranks_per_client=4; launch with "
        r"--nproc_per_node=1\+N\*4 \(e.g. 5, 9\)",
    ):
        Placement(16, 4, ranks_per_client=4).check()
    with pytest.raises(ValueError, match="of 2 ranks each; launch with --nproc_per_node=5 or fewer"):
        Placement(7, 2, ranks_per_client=2).check()
    assert Placement(1, 3, ranks_per_client=2).clients_of(0) == [0, 1, 2]  # simulation: one process
