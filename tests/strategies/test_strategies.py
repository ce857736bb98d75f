"""Each algorithm against a hand computation on tiny tensors: server optimizers, FedProx, SCAFFOLD,
robust aggregation, sampling, and the strategy's messages."""

from __future__ import annotations

import math

import pytest
import torch

from fl.comm.message import Message
from fl.config import Config
from fl.strategies import ClientUpdate, ServerOptimizer, build_strategy, round_stats, update_problem
from fl.strategies.aggregate import MeanAggregation, coordinate_median, trimmed_mean
from fl.strategies.fedprox import ProxTerm
from fl.strategies.scaffold import CorrectionTerm, Scaffold, scaffold_client_update, scaffold_server_update
from fl.strategies.strategy import Strategy, sample_clients

T = torch.tensor


def test_fedadam_three_rounds_by_hand():
    """Reddi et al. 2021, Algorithm 2, written out with Python floats for one coordinate."""
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = ServerOptimizer("adam", lr=eta, betas=(b1, b2), tau=tau)
    x = {"w": T([1.0])}
    xs, m, v = 1.0, 0.0, tau**2  # m_{-1} = 0, v_{-1} = tau^2
    for d in (0.5, -0.2, 0.3):
        x = opt.step(x, {"w": T([d])})
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        xs = xs + eta * m / (math.sqrt(v) + tau)
    assert x["w"].item() == pytest.approx(xs, rel=1e-6) and opt.steps == 3


@pytest.mark.parametrize("kind", ["yogi", "adagrad", "momentum", "sgd"])
def test_other_server_optimizers_two_rounds_by_hand(kind):
    eta, b1, b2, tau, beta = 0.5, 0.9, 0.99, 1e-2, 0.8
    opt = ServerOptimizer(kind, lr=eta, momentum=beta, betas=(b1, b2), tau=tau)
    x = {"w": T([0.0])}
    xs, m, v = 0.0, 0.0, tau**2
    for d in (0.4, -0.1):
        x = opt.step(x, {"w": T([d])})
        if kind == "sgd":
            xs += eta * d
            continue
        if kind == "momentum":  # FedAvgM: m = beta * m + d
            m = beta * m + d
            xs += eta * m
            continue
        m = b1 * m + (1 - b1) * d
        v = v + d * d if kind == "adagrad" else v - (1 - b2) * d * d * math.copysign(1.0, v - d * d)
        xs += eta * m / (math.sqrt(v) + tau)
    assert x["w"].item() == pytest.approx(xs, rel=1e-6)


def test_server_optimizer_state_round_trips():
    a = ServerOptimizer("yogi", lr=0.1)
    a.step({"w": T([1.0, 2.0])}, {"w": T([0.1, -0.3])})
    tensors, extra = a.state()
    b = ServerOptimizer("yogi", lr=0.1)
    b.load_state(tensors, extra, torch.device("cpu"))
    x = {"w": T([1.0, 2.0])}
    assert torch.equal(a.step(x, {"w": T([0.2, 0.2])})["w"], b.step(x, {"w": T([0.2, 0.2])})["w"])


def test_fedprox_gradient_is_that_of_the_proximal_term():
    """after_backward adds mu * (w - w_global): the gradient of mu/2 * ||w - w_global||^2."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    anchor = {"w": torch.randn(3, 2)}
    x, mu = torch.randn(4, 3), 0.7
    (x @ w).pow(2).sum().backward()
    ProxTerm(mu, anchor).after_backward({"w": w})
    ours = w.grad.clone()
    w.grad = None
    ((x @ w).pow(2).sum() + 0.5 * mu * ((w - anchor["w"]) ** 2).sum()).backward()
    torch.testing.assert_close(ours, w.grad)


def test_scaffold_control_variates_by_hand():
    # option II: c_i+ = c_i - c + (x - y) / (K * lr) with K * lr = 0.5
    new, change = scaffold_client_update({"w": T([0.1])}, {"w": T([0.3])}, {"w": T([1.0])}, {"w": T([0.4])}, 0.5)
    assert new["w"].item() == pytest.approx(0.1 - 0.3 + 0.6 / 0.5) and change["w"].item() == pytest.approx(0.9)
    first, _ = scaffold_client_update(None, {"w": T([0.3])}, {"w": T([1.0])}, {"w": T([0.4])}, 0.5)  # c_i = 0
    assert first["w"].item() == pytest.approx(-0.3 + 1.2)
    # the server adds the sum of the changes over N = 4 clients (2 sampled): c + (0.9 + 0.3) / 4
    assert scaffold_server_update({"w": T([0.3])}, {"w": T([1.2])}, 4)["w"].item() == pytest.approx(0.6)
    # each local step is corrected by -lr * (c - c_i)
    p = torch.nn.Parameter(T([1.0, 1.0]))
    CorrectionTerm({"w": T([0.5, -1.0])}).after_step({"w": p}, lr=0.1)
    assert p.detach().tolist() == pytest.approx([0.95, 1.1])


def test_median_and_trimmed_mean_resist_an_outlier():
    states = [{"w": T([1.0, -1.0])}, {"w": T([2.0, 0.0])}, {"w": T([3.0, 1.0])}, {"w": T([100.0, -50.0])}]
    assert coordinate_median(states)["w"].tolist() == [2.5, -0.5]  # even count: mean of the middle two
    assert coordinate_median(states[:3])["w"].tolist() == [2.0, 0.0]
    assert trimmed_mean(states, 0.25)["w"].tolist() == [2.5, -0.5]  # drops 1 from each end
    assert trimmed_mean(states, 0.0)["w"].tolist() == [26.5, -12.5]  # plain mean
    with pytest.raises(ValueError, match="trim ratio"):
        trimmed_mean(states, 0.5)


def test_sampling_is_seeded_sorted_and_varies_by_round():
    a = [sample_clients(10, 3, 42, r) for r in range(1, 6)]
    assert a == [sample_clients(10, 3, 42, r) for r in range(1, 6)]  # any rank computes the same
    assert all(len(s) == 3 and list(s) == sorted(s) and len(set(s)) == 3 for s in a)
    assert len(set(a)) > 1  # rounds differ
    assert [sample_clients(10, 3, 43, r) for r in range(1, 6)] != a  # and so do seeds
    assert sample_clients(4, None, 42, 1) == (0, 1, 2, 3) == sample_clients(4, 4, 42, 1)


def _update(c: int, n: int, value: float) -> ClientUpdate:
    return ClientUpdate(c, n, {"w": T([value, value])}, loss_sum=n * 0.5, seen=n)


def no_model(state: dict) -> None:
    """The server step's `load` for strategies whose parts never train on the server."""


def test_strategy_weighted_mean_and_server_step_from_messages():
    s = build_strategy(Config(num_clients=3, scheme="fedavg"))
    plan = s.plan_round(1)
    glob = {"w": T([1.0, 1.0])}
    template = s.upload_template(glob, plan)
    total = template.zeros()
    for u in (_update(0, 1, 1.0), _update(1, 3, 3.0)):
        total.add_(s.client_message(template, u, plan))
    bad = _update(2, 5, 0.0)
    bad.reject = 1
    total.add_(s.client_message(template, bad, plan))
    new, record = s.server_step(glob, total, None, plan, no_model)
    assert record == {} and new["w"].tolist() == [1.0 + 2.5, 1.0 + 2.5]  # (1*1 + 3*3) / 4 added to the global state
    stats = round_stats(total, plan)
    assert stats["num_examples"] == 4 and stats["rejected_clients"] == {"2": "non-finite values"}
    assert stats["train_loss"] == pytest.approx(0.5) and stats["client_train_loss"]["2"] == pytest.approx(0.5)


def test_strategy_median_uses_individual_updates():
    s = build_strategy(Config(num_clients=3, scheme="fedavg", aggregation="median"))
    plan = s.plan_round(1)
    glob = {"w": T([0.0, 0.0])}
    template = s.upload_template(glob, plan)
    msgs = {
        u.client: s.client_message(template, u, plan)
        for u in (_update(0, 1, 1.0), _update(1, 1, 2.0), _update(2, 9, 90.0))
    }
    sums = template.zeros()
    for m in msgs.values():
        sums.add_(m)
    assert s.server_step(glob, sums, msgs, plan, no_model)[0]["w"].tolist() == [2.0, 2.0]


def test_update_problem_codes():
    assert update_problem({"w": T([3.0, 4.0])}, None) == (0, 5.0)
    assert update_problem({"w": T([3.0, 4.0])}, 4.0) == (2, 5.0)
    assert update_problem({"w": T([float("nan")])}, None)[0] == 1


def test_downlink_carries_scaffold_control_by_name():
    s = build_strategy(Config(num_clients=2, scheme="fedavg", scaffold=True))
    msg = s.downlink({"w": T([1.0])}, 1, {})
    assert set(msg.parts) == {"global", "control"} and msg.parts["control"]["w"].tolist() == [0.0]
    scaffold = s.part(Scaffold)
    scaffold.control = {"w": T([0.5])}
    glob = s.read_downlink(Message({"global": {"w": T([2.0])}, "control": {"w": T([0.25])}}))
    assert glob["w"].tolist() == [2.0] and scaffold.control["w"].tolist() == [0.25]


def test_parts_compose_in_order_and_state_is_prefixed_by_part():
    """The aggregator comes first; each part's state travels under its name; client state by part."""
    cfg = Config(num_clients=2, scheme="fedavg", scaffold=True, server_optimizer="adam", server_lr=0.1)
    s = build_strategy(cfg)
    assert isinstance(s.aggregator, MeanAggregation) and [p.name for p in s.parts] == ["aggregate", "opt", "control"]
    glob = {"w": T([1.0])}
    s.downlink(glob, 1, {})
    s.read_downlink(Message({"global": glob, "control": {"w": T([0.5])}}))
    plan = s.plan_round(1)
    template = s.upload_template(glob, plan)
    total = template.zeros()
    u = ClientUpdate(0, 2, {"w": T([0.2])}, 1.0, 2, parts={"control": {"w": T([1.0])}})
    total.add_(s.client_message(template, u, plan))
    s.server_step(glob, total, None, plan, no_model)
    tensors, extra = s.state()
    assert sorted(tensors) == ["control.w", "opt.m.w", "opt.v.w"] and extra == {"opt": {"steps": 1}}
    assert tensors["control.w"].item() == pytest.approx(0.5 + 1.0 / 2)  # c + sum of changes / N
    like = s.client_state_like(glob)
    assert set(like.parts) == {"control"} and s.client_state(1, like).parts["control"]["w"].tolist() == [0.0]
    fresh = build_strategy(cfg)
    fresh.load_state(tensors, extra, torch.device("cpu"))
    assert fresh.part(ServerOptimizer).steps == 1 and fresh.part(Scaffold).control["w"].item() == pytest.approx(1.0)


def test_a_strategy_starts_with_its_aggregator():
    with pytest.raises(ValueError, match="aggregator"):
        Strategy([ServerOptimizer()], num_clients=1, seed=0, lr=0.1)
