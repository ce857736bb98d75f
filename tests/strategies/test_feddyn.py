"""FedDyn (the worked example of a stateful part in docs/architecture.md): the client term against autograd of
the paper's local objective, the client and server state by hand, and a resumed run equal bit for
bit to an uninterrupted one (the per-client state travels through the checkpoint)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fl.comm.message import Message
from fl.config import Config
from fl.errors import ConfigError
from fl.strategies import build_strategy
from fl.strategies.base import ClientContext, RoundPlan, ServerStep, TrainResult
from fl.strategies.feddyn import DynamicTerm, FedDyn

T = torch.tensor


def test_the_client_term_is_the_gradient_of_the_dynamic_regulariser():
    """grad of L(w) - <g, w> + alpha/2 ||w - w0||^2 = grad L - g + alpha (w - w0)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3))
    w0, g, alpha, x = torch.randn(3), torch.randn(3), 0.3, torch.randn(3)
    (x @ w).pow(2).backward()
    DynamicTerm(alpha, {"w": w0}, {"w": g}).after_backward({"w": w})
    ours = w.grad.clone()
    w.grad = None
    ((x @ w).pow(2) - g @ w + 0.5 * alpha * ((w - w0) ** 2).sum()).backward()
    torch.testing.assert_close(ours, w.grad)


def test_client_and_server_state_by_hand():
    alpha, m = 0.5, 4
    dyn = FedDyn(alpha, m)
    plan = RoundPlan(1, (0, 1), 0.1)
    start = {"w": T([1.0])}
    ctx = ClientContext(0, plan, start, 0, 1, 1, torch.device("cpu"))
    assert dyn.client_finish(ctx, {"w": T([1.4])}, TrainResult(1, 0.0, 1, 1, 0.1, 0.1), None) == {}
    assert dyn.client_state(0)["w"].item() == pytest.approx(-alpha * 0.4)  # g_0 = 0 - alpha (theta_0 - theta)
    dyn.client_finish(ctx, {"w": T([1.2])}, TrainResult(1, 0.0, 1, 1, 0.1, 0.1), None)
    assert dyn.client_state(0)["w"].item() == pytest.approx(-alpha * 0.4 - alpha * 0.2)
    # server: 2 accepted of 4 clients, mean change 0.3 -> h = -alpha * 2/4 * 0.3; theta = 1 + 0.3 - h / alpha
    sums = Message({"delta": {"w": T([0.6])}}, {"weight": 2.0, "accepted": 2.0})
    step = ServerStep(plan, start, sums, None, load=lambda s: None, delta={"w": T([0.3])}, new={"w": T([1.3])})
    dyn.server_step(step)
    h = -alpha * 0.5 * 0.3
    assert dyn.h["w"].item() == pytest.approx(h) and step.new["w"].item() == pytest.approx(1.3 - h / alpha)
    step = ServerStep(plan, step.new, sums, None, load=lambda s: None, delta={"w": T([0.1])}, new={"w": T([2.0])})
    dyn.server_step(step)  # h keeps what it had: h - alpha * 1/2 * 0.1
    assert dyn.h["w"].item() == pytest.approx(h - alpha * 0.5 * 0.1)


def test_feddyn_joins_the_strategy_as_one_part_and_refuses_what_it_replaces():
    s = build_strategy(Config(scheme="fedavg", feddyn_alpha=0.1))
    assert [p.name for p in s.parts] == ["aggregate", "opt", "dyn"]
    assert set(s.client_state_like({"w": T([0.0])}).parts) == {"dyn"}
    for bad in ({"server_optimizer": "adam"}, {"aggregation": "median"}, {"scaffold": True}):
        with pytest.raises(ConfigError, match="feddyn_alpha replaces the server step"):
            build_strategy(Config(scheme="fedavg", feddyn_alpha=0.1, **bad))


@pytest.mark.slow
def test_resumed_feddyn_run_is_bit_identical(tmp_path, tiny_overrides):
    from fl.config.recipe import load_config
    from fl.job import run_document as run
    from tests.helpers import RECIPE

    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name", "rounds"))]
    base += [f"output_dir={tmp_path}", "feddyn_alpha=0.05", "clients_per_round=3"]
    whole = run(load_config(RECIPE, [*base, "rounds=3", "run_name=whole"]))
    run(load_config(RECIPE, [*base, "rounds=2", "run_name=cut"]))
    resumed = run(load_config(RECIPE, [*base, "rounds=3", "run_name=cut", "resume=true"]))
    assert [r["test_loss"] for r in resumed["rounds"]] == [r["test_loss"] for r in whole["rounds"]]
    a, b = (load_file(tmp_path / n / "adapter" / "adapter_model.safetensors") for n in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_file(tmp_path / "cut" / "checkpoints" / "round-0003" / "state.safetensors")
    assert any(k.startswith("server.dyn.") for k in state) and any(k.startswith("client.0.dyn.") for k in state)
