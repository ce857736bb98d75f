"""The aggregators as parts: client messages and the pseudo-gradient, by hand on tiny tensors."""

import pytest
import torch

from fl.comm.message import Message
from fl.strategies.aggregate import MeanAggregation, RobustAggregation, check_same_keys
from fl.strategies.base import ClientUpdate, RoundPlan, ServerStep

PLAN = RoundPlan(1, (0, 1), 0.1)


def template(shape: tuple[int, ...] = (2,)) -> Message:
    scalars = {"weight": 0.0, "accepted": 0.0}
    for c in PLAN.clients:
        scalars.update({f"c{c}.{k}": 0.0 for k in ("examples", "loss_sum", "seen", "reject", "norm")})
    return Message({"delta": {"w": torch.zeros(shape)}}, scalars)


def step_of(agg, msgs: dict[int, Message]) -> ServerStep:
    sums = template().zeros()
    for m in msgs.values():
        sums.add_(m)
    step = ServerStep(PLAN, {"w": torch.zeros(2)}, sums, msgs if agg.gathers else None, load=lambda s: None)
    agg.server_step(step)
    return step


def test_mean_weights_each_change_by_its_examples():
    agg = MeanAggregation()
    ups = [
        ClientUpdate(0, 1, {"w": torch.tensor([1.0, 2.0])}, 0.5, 1),
        ClientUpdate(1, 3, {"w": torch.tensor([3.0, 6.0])}, 1.5, 3),
    ]
    msgs = {u.client: agg.client_message(template(), u, PLAN) for u in ups}
    assert msgs[1].parts["delta"]["w"].tolist() == [9.0, 18.0] and msgs[1].scalars["weight"] == 3.0
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5
    assert step_of(agg, msgs).delta["w"].tolist() == [2.5, 5.0]


def test_messages_are_fp32_whatever_the_update_dtype():
    agg = MeanAggregation()
    u = ClientUpdate(0, 10, {"w": torch.tensor([60000.0, 60000.0], dtype=torch.float16)}, 0.0, 10)
    msg = agg.client_message(template(), u, PLAN)  # 6e5 would overflow fp16
    assert msg.parts["delta"]["w"].dtype == torch.float32 and msg.parts["delta"]["w"][0].item() == 600000.0
    assert u.delta["w"][0].item() == 60000.0


def test_a_rejected_client_sends_its_statistics_and_no_change():
    agg = MeanAggregation()
    msg = agg.client_message(template(), ClientUpdate(1, 5, {"w": torch.ones(2)}, 2.0, 5, reject=1), PLAN)
    assert msg.scalars["c1.reject"] == 1 and msg.scalars["accepted"] == 0 and msg.parts["delta"]["w"].sum() == 0


def test_robust_aggregation_takes_the_median_of_the_accepted_changes_unweighted():
    agg = RobustAggregation("median")
    ups = [
        ClientUpdate(0, 1, {"w": torch.tensor([1.0, 1.0])}, 0, 1),
        ClientUpdate(1, 100, {"w": torch.tensor([3.0, 5.0])}, 0, 1),
    ]
    msgs = {u.client: agg.client_message(template(), u, PLAN) for u in ups}
    assert msgs[1].parts["delta"]["w"].tolist() == [3.0, 5.0]  # gathered mode: as it is
    assert step_of(agg, msgs).delta["w"].tolist() == [2.0, 3.0]


def test_key_and_shape_mismatch_are_errors():
    with pytest.raises(ValueError, match="unexpected \\['z'\\], missing \\['x'\\]"):
        check_same_keys({"x": torch.ones(1)}, {"z": torch.ones(1)})
    with pytest.raises(ValueError, match="has shape"):
        check_same_keys({"x": torch.ones(1)}, {"x": torch.ones(2)})
    with pytest.raises(ValueError, match="not robust"):
        RobustAggregation("mean")
