import json

import pytest
import torch

from fl import comm
from fl.comm.message import Message, pack, unpack
from tests.helpers import spawn


def test_pack_unpack_by_name_and_size():
    msg = Message(
        {"delta": {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([7.0], dtype=torch.float16)}},
        {"z": 5.0, "y": 6.0},
    )
    buf = pack(msg)
    assert buf.dtype == torch.float32 and buf.numel() == 9 and msg.nbytes == 9 * 4
    assert buf[0].item() == 7.0 and buf[-2:].tolist() == [6.0, 5.0]  # names sorted: 'a' first, scalar 'y' before 'z'
    out = unpack(buf, msg)
    assert torch.equal(out.parts["delta"]["b"], msg.parts["delta"]["b"]) and out.parts["delta"]["a"].item() == 7.0
    assert out.scalars == {"y": 6.0, "z": 5.0}
    with pytest.raises(ValueError, match="does not match"):
        unpack(buf[:-1], msg)


def test_message_add_requires_the_same_names():
    a = Message({"p": {"x": torch.ones(2)}}, {"n": 1.0})
    a.add_(Message({"p": {"x": torch.full((2,), 2.0)}}, {"n": 3.0}), alpha=2.0)
    assert a.parts["p"]["x"].tolist() == [5.0, 5.0] and a.scalars == {"n": 7.0}
    with pytest.raises(ValueError, match="differ in their names"):
        a.add_(Message({"p": {"x": torch.ones(2)}}, {"m": 1.0}))
    zeros = a.zeros()
    assert zeros.parts["p"]["x"].tolist() == [0.0, 0.0] and zeros.scalars == {"n": 0.0}


def test_collectives_without_process_group_move_nothing():
    rt = comm.Runtime()
    assert not rt.distributed and rt.is_main and rt.client_ranks == 1 and rt.backend is None
    msg = Message({"p": {"x": torch.ones(2)}}, {"n": 1.0})
    assert comm.broadcast(rt, msg) == (msg, 0)
    assert comm.reduce_sum(rt, msg) == (msg, 0)
    assert comm.gather_messages(rt, {3: msg}, msg, {3: 0}) == ({3: msg}, 0)
    assert comm.all_ok(rt, True) and comm.broadcast_object(rt, {"a": 1}) == {"a": 1}


def _collectives(rank: int, out_dir: str, relay: str) -> None:
    rt = comm.init("cpu", num_threads=1, client_allreduce=relay)
    assert rt.backend == "gloo" and rt.world_size == 4 and rt.device.type == "cpu"
    like = Message({"p": {"w": torch.zeros(2, 2), "v": torch.zeros(3)}}, {"n": 0.0})
    mine = Message({"p": {"w": torch.full((2, 2), 9.0), "v": torch.arange(3.0)}}, {"n": 5.0}) if rank == 0 else like
    got, down = comm.broadcast(rt, mine)
    ok_bcast = torch.equal(got.parts["p"]["w"], torch.full((2, 2), 9.0)) and got.scalars["n"] == 5.0
    contrib = (
        like.zeros()
        if rank == 0
        else Message({"p": {"w": torch.full((2, 2), float(rank)), "v": torch.ones(3)}}, {"n": float(rank)})
    )
    summed, up = comm.reduce_sum(rt, contrib)
    one = Message({"p": {"x": torch.zeros(2)}})
    owned = {1: 1, 2: 2, 3: 3, 4: 1}  # client -> rank
    mine_rows = {c: Message({"p": {"x": torch.full((2,), float(c))}}) for c, r in owned.items() if r == rank}
    gathered, gathered_bytes = comm.gather_messages(rt, mine_rows, one, owned)
    flags = comm.all_ok(rt, rank != 2)
    if rank == 0:
        result = {
            "relay": rt.client_group is not None,
            "bcast": ok_bcast,
            "sum": summed.parts["p"]["w"].tolist(),
            "n": summed.scalars["n"],
            "gathered": {str(c): m.parts["p"]["x"].tolist() for c, m in gathered.items()},
            "gathered_bytes": gathered_bytes,
            "flags": flags,
            "up": up,
            "down": down,
        }
        with open(f"{out_dir}/r0-{relay}.json", "w") as fh:
            json.dump(result, fh)
    comm.shutdown()


@pytest.mark.parametrize("relay", ["false", "true"])
def test_gloo_collectives(tmp_path, relay):
    """4 ranks: plain broadcast / reduce over gloo, or the client-group relay (the NCCL layout's code path)."""
    spawn(_collectives, 4, str(tmp_path), relay)
    r = json.loads((tmp_path / f"r0-{relay}.json").read_text())
    assert r["relay"] is (relay == "true")
    assert r["bcast"] is True
    assert r["sum"] == [[6.0, 6.0], [6.0, 6.0]] and r["n"] == 6.0  # 0 + 1 + 2 + 3
    assert r["gathered"] == {"1": [1.0, 1.0], "2": [2.0, 2.0], "3": [3.0, 3.0], "4": [4.0, 4.0]}
    assert r["gathered_bytes"] == 3 * 2 * 2 * 4  # 3 client ranks x 2 padded rows x 2 floats
    assert r["flags"] is False  # rank 2 said not ok
    assert r["down"] == 8 * 4 * 3  # 8 floats (7 + 1 scalar) reach 3 ranks (relayed or not)
    assert r["up"] == 8 * 4 * 3


def _bucketed(rank: int, out_dir: str, relay: str) -> None:
    """The same random messages broadcast and reduced whole and in buckets of 5 values (smaller than
    a tensor, a tensor split over buckets, the scalars in the last); plus byte payloads."""
    shapes = {"a": (3, 4), "b": (7,), "c": (2, 2, 2)}

    def message(seed_rank: int) -> Message:
        g = torch.Generator().manual_seed(seed_rank)
        return Message({"p": {k: torch.randn(*s, generator=g) for k, s in shapes.items()}}, {"n": 0.5 + seed_rank})

    out = {}
    for cap in (0, 5):
        rt = comm.init("cpu", num_threads=1, client_allreduce=relay) if cap == 0 else rt  # noqa: F821
        rt.bucket_numel = cap
        down, moved_down = comm.broadcast(rt, message(0) if rank == 0 else message(99).zeros())
        up, moved_up = comm.reduce_sum(rt, message(rank))
        if rank == 0:
            out[cap] = {
                "down": {k: v.tolist() for k, v in down.parts["p"].items()},
                "n": down.scalars["n"],
                "up": {k: v.tolist() for k, v in up.parts["p"].items()},
                "un": up.scalars["n"],
                "bytes": [moved_down, moved_up],
            }
    payload, moved = comm.broadcast_bytes(
        rt, torch.arange(10, dtype=torch.uint8) if rank == 0 else torch.zeros(10, dtype=torch.uint8)
    )
    got, gmoved = comm.gather_bytes(
        rt, {rank: torch.full((4,), rank, dtype=torch.uint8)} if rank else {}, 4, {1: 1, 2: 2, 3: 3}
    )
    if rank == 0:
        got_lists = {str(k): v.tolist() for k, v in got.items()}
        out["bytes"] = {"payload": payload.tolist(), "moved": moved, "got": got_lists, "gmoved": gmoved}
        with open(f"{out_dir}/bucketed-{relay}.json", "w") as fh:
            json.dump(out, fh)
    comm.shutdown()


@pytest.mark.parametrize("relay", ["false", "true"])
def test_bucketed_collectives_are_bit_identical_to_whole_ones(tmp_path, relay):
    spawn(_bucketed, 4, str(tmp_path), relay)
    r = json.loads((tmp_path / f"bucketed-{relay}.json").read_text())
    assert r["0"] == r["5"]  # every value, bit for bit (JSON keeps every digit of a float)
    own = 0.0 if relay == "true" else 0.5  # in the relay rank 0's own message is not added (it holds no client)
    assert r["0"]["n"] == 0.5 and r["0"]["un"] == own + 1.5 + 2.5 + 3.5
    assert r["0"]["bytes"] == [(12 + 7 + 8 + 1) * 4 * 3, (12 + 7 + 8 + 1) * 4 * 3]
    assert r["bytes"]["payload"] == list(range(10)) and r["bytes"]["moved"] == 10 * 3
    assert r["bytes"]["got"] == {"1": [1] * 4, "2": [2] * 4, "3": [3] * 4} and r["bytes"]["gmoved"] == 12


def _world_of_one(rank: int, out_dir: str) -> None:
    """torchrun --nproc_per_node=1: a process group of one, rank 0 its own client."""
    rt = comm.init("cpu", num_threads=1)
    msg = Message({"p": {"x": torch.arange(3.0)}}, {"n": 2.0})
    summed, up = comm.reduce_sum(rt, msg)
    got, moved = comm.gather_messages(rt, {0: msg}, msg, {0: 0})
    ok = rt.distributed and rt.federation == [0] and torch.equal(summed.parts["p"]["x"], torch.arange(3.0))
    ok = ok and up == 0 and torch.equal(got[0].parts["p"]["x"], torch.arange(3.0)) and moved == 0
    comm.shutdown()
    with open(f"{out_dir}/one.json", "w") as fh:
        json.dump({"ok": bool(ok)}, fh)


@pytest.mark.slow
def test_a_world_of_one_moves_nothing_and_keeps_its_message(tmp_path):
    spawn(_world_of_one, 1, str(tmp_path))
    assert json.loads((tmp_path / "one.json").read_text()) == {"ok": True}
