"""Compressed updates: the codecs' round-trip error bounds and sizes, top-k's error feedback that
loses nothing (sent + residual = the true sum, exactly), and the part's bytes."""

from __future__ import annotations

import math

import pytest
import torch

from fl.comm.codecs import INT8_BLOCK, Codec
from fl.comm.message import Message
from fl.strategies.compression import Compression

G = torch.Generator().manual_seed(0)


def msg(*shapes, scale=1.0) -> Message:
    return Message(
        {"delta": {f"t{i}": torch.randn(*s, generator=G) * scale for i, s in enumerate(shapes)}},
        {"weight": 3.0, "accepted": 1.0},
    )


def test_bf16_round_trip_is_within_half_a_bf16_ulp():
    m = msg((40, 7), (300,))
    c = Codec("bf16")
    back = c.decode(c.encode(m, 1), m)
    for k, x in m.parts["delta"].items():
        assert ((back.parts["delta"][k] - x).abs() <= x.abs() * 2**-8 + 1e-30).all()
    assert back.scalars == m.scalars and c.message_bytes(m) == 2 * (280 + 300) + 4 * 2


def test_int8_round_trip_is_within_one_step_of_its_block_and_unbiased():
    m = msg((1000,), (3, 5))
    c = Codec("int8")
    payload = c.encode(m, 7)
    assert payload.numel() == c.message_bytes(m) == 1000 + 4 * math.ceil(1000 / INT8_BLOCK) + 15 + 4 + 8
    back = c.decode(payload, m)
    for k, x in m.parts["delta"].items():
        flat = x.reshape(-1)
        blocks = torch.nn.functional.pad(flat, (0, (-flat.numel()) % INT8_BLOCK)).view(-1, INT8_BLOCK)
        step = (blocks.abs().amax(1) / 127).repeat_interleave(INT8_BLOCK)[: flat.numel()]
        assert ((back.parts["delta"][k].reshape(-1) - flat).abs() <= step + 1e-7).all()
    x = torch.full((INT8_BLOCK,), 0.3)
    x[0] = 1.0  # scale 1/127: 0.3 lies between two steps, rounded up or down at random
    mean = torch.stack([c.decode_tensor(torch.cat(c.encode_tensor(x, s)), x) for s in range(400)]).mean(0)
    assert abs(float(mean[1:].mean()) - 0.3) < 1e-3  # stochastic rounding: unbiased


def test_topk_keeps_the_largest_values_and_its_feedback_loses_nothing():
    c = Codec("topk", topk_ratio=0.25)
    x = torch.tensor([0.5, -4.0, 1.0, 3.0, -0.25, 2.0, 0.0, -1.5])
    back = c.decode_tensor(torch.cat(c.encode_tensor(x, 0)), x)
    assert back.tolist() == [0, -4.0, 0, 3.0, 0, 0, 0, 0] and c.tensor_bytes(8) == 2 * 8
    part = Compression(c, seed=1)
    like = Message({"delta": {"w": torch.zeros(64)}}, {"weight": 0.0, "accepted": 0.0})
    truth, sent = torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    for r in range(1, 9):  # dyadic values: every fp32 sum below is exact, so the check can be exact too
        update = torch.randint(-64, 64, (64,), generator=G).float() / 8
        m = Message({"delta": {"w": update}}, {"weight": 1.0, "accepted": 1.0})
        got = c.decode(part.encode_client(5, m, r), like).parts["delta"]["w"]
        truth += update.double()
        sent += got.double()
    assert torch.equal(sent + part.residuals[5]["w"].double(), truth)
    assert part.residuals[5]["w"].abs().sum() > 0  # something was held back, and will still be sent


def test_the_server_sends_the_change_and_every_rank_adds_it():
    part = Compression(Codec("topk", topk_ratio=0.5), seed=1)
    start = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    part.remember(start)
    new = {"w": torch.tensor([1.0, 2.5, 0.0, 4.25])}
    got = part.decode_down(part.encode_down(new, 2))
    assert got["w"].tolist() == [1.0, 2.5, 0.0, 4.0]  # the two largest changes arrive, the rest waits
    assert part.down_residual["w"].tolist() == [0.0, 0.0, 0.0, 0.25]


def test_compression_refuses_dp_and_scales_the_deployment_bytes():
    from fl.config import Config
    from fl.errors import ConfigError
    from fl.strategies import build_strategy

    with pytest.raises(ConfigError, match="no longer bounded by dp_clip"):
        build_strategy(Config(update_compression="int8", dp_clip=1.0))
    s = build_strategy(Config(scheme="fedavg", update_compression="bf16"))
    counts = s.byte_counts(s.plan_round(1), {"w": torch.zeros(100)}, 1)
    assert counts["bytes_up"] == counts["bytes_down"] == 4 * 100 * 2  # 4 clients x 100 values x 2 bytes
