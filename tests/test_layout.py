"""The process layout for every layout of issue 9, on a CPU: devices and backends per rank."""

import pytest

from fl.layout import Layout, describe, plan_layout


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
