import json

import torch

from fl import comm
from tests.dist_utils import spawn


def test_pack_unpack_roundtrip_and_size():
    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([7.0], dtype=torch.float16)}
    buf = comm.pack(state, [5.0, 6.0])
    assert buf.dtype == torch.float32 and buf.numel() == 9
    assert buf[:1].item() == 7.0  # sorted by name: 'a' first
    out, scalars = comm.unpack(buf, state, 2)
    assert torch.equal(out["b"], state["b"]) and out["a"].item() == 7.0 and scalars == [5.0, 6.0]
    assert comm.packed_nbytes(state, 2) == 9 * 4


def test_helpers_without_process_group():
    rt = comm.Runtime()
    assert not rt.distributed and rt.is_main and rt.client_ranks == 1
    state = {"x": torch.ones(2)}
    assert comm.broadcast_state(rt, state)[0] is state
    assert comm.reduce_sum(rt, state, [1.0])[1] == [1.0]
    assert comm.all_ok(rt, True) and comm.broadcast_object(rt, {"a": 1}) == {"a": 1}


def _collectives(rank: int, out_dir: str) -> None:
    rt = comm.init("cpu", num_threads=1)
    assert rt.backend == "gloo" and rt.world_size == 3 and rt.num_threads == 1
    like = {"w": torch.zeros(2, 2), "v": torch.zeros(3)}
    mine = {"w": torch.full((2, 2), 9.0), "v": torch.arange(3.0)} if rank == 0 else like
    got, _ = comm.broadcast_state(rt, mine)
    ok_bcast = torch.equal(got["w"], torch.full((2, 2), 9.0)) and torch.equal(got["v"], torch.arange(3.0))
    contrib = {k: torch.full_like(v, float(rank)) for k, v in like.items()}
    summed, scalars = comm.reduce_sum(rt, contrib, [float(rank), 1.0])
    flags = comm.all_ok(rt, rank != 2)
    up, down = comm.bytes_moved.take()
    if rank == 0:
        result = {
            "bcast": ok_bcast,
            "sum": summed["w"].tolist(),
            "scalars": scalars,
            "flags": flags,
            "up": up,
            "down": down,
        }
        with open(f"{out_dir}/r0.json", "w") as fh:
            json.dump(result, fh)
    comm.shutdown()


def test_gloo_broadcast_and_reduce(tmp_path):
    spawn(_collectives, 3, str(tmp_path))
    r = json.loads((tmp_path / "r0.json").read_text())
    assert r["bcast"] is True
    assert r["sum"] == [[3.0, 3.0], [3.0, 3.0]]  # 0 + 1 + 2
    assert r["scalars"] == [3.0, 3.0]
    assert r["flags"] is False  # rank 2 said not ok
    assert r["down"] == 7 * 4 * 2  # 7 floats to each of 2 other ranks
    assert r["up"] == 9 * 4 * 2  # 7 floats + 2 scalars from each of 2 other ranks
