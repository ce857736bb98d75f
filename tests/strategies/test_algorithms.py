"""Federated algorithms end to end on the tiny BERT: the same numbers in simulation and under
torchrun, sampled clients only do work, and kill-and-resume restores every piece of state."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fl.config.recipe import load_config
from fl.job import run_document as run
from fl.strategies.strategy import sample_clients
from tests.helpers import RECIPE, run_torchrun, whole_and_resumed

pytestmark = pytest.mark.slow

TIMING = ("time_", "wire_bytes", "bytes_eval")


def records(doc: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in doc["rounds"]]


def adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def sim_vs_torchrun(tmp_path, tiny_overrides, extra: list[str]) -> tuple[dict, dict]:
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name"))] + extra
    proc = run_torchrun(3, [*base, f"output_dir={tmp_path}", "run_name=dist"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = run(load_config(RECIPE, [*base, f"output_dir={tmp_path}", "run_name=sim"]))
    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    a, b = adapter(tmp_path / "dist"), adapter(tmp_path / "sim")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    for x, y in zip(sim["rounds"], dist["rounds"], strict=True):
        assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1e-6)
        assert x["test_loss"] == pytest.approx(y["test_loss"], abs=1e-4)
        assert x.get("sampled_clients") == y.get("sampled_clients")
        assert (x["bytes_up"], x["bytes_down"]) == (y["bytes_up"], y["bytes_down"])
    return sim, dist


def test_fedadam_with_sampling_same_in_simulation_and_torchrun(tmp_path, tiny_overrides):
    extra = ["clients_per_round=2", "server_optimizer=adam", "server_lr=0.01", "rounds=3"]
    sim, dist = sim_vs_torchrun(tmp_path, tiny_overrides, extra)
    for rec in dist["rounds"][1:]:
        assert tuple(rec["sampled_clients"]) == sample_clients(4, 2, 42, rec["round"])
        assert sorted(rec["client_train_loss"], key=int) == [
            str(c) for c in rec["sampled_clients"]
        ]  # only they trained
        assert rec["bytes_up"] == 2 * dist["payload_bytes"]  # two clients sent an update
    assert len({tuple(r["sampled_clients"]) for r in dist["rounds"][1:]}) > 1


def test_median_gathers_and_matches_simulation(tmp_path, tiny_overrides):
    sim, dist = sim_vs_torchrun(tmp_path, tiny_overrides, ["aggregation=median"])
    # the aggregation error comes from the gathered updates' factors: no d_out x d_in product travels
    per_client = dist["payload_bytes"] + (2 + 5 * 4) * 4  # an update and the scalars
    for rec in dist["rounds"][1:]:
        # each client rank sends its 2 clients' updates as rows of one buffer: 2 ranks x 2 rows
        assert rec["wire_bytes_up"] == 2 * 2 * per_client
        assert rec["bytes_products"] == 0 and rec["aggregation_error"] > 0


def test_fedprox_pulls_updates_towards_the_global_state(tmp_path, tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name", "rounds"))] + ["rounds=1"]
    free = run(load_config(RECIPE, [*base, f"output_dir={tmp_path}", "run_name=free"]))
    prox = run(load_config(RECIPE, [*base, f"output_dir={tmp_path}", "run_name=prox", "prox_mu=50"]))
    g0 = adapter(tmp_path / "free")  # only used for keys
    assert set(g0) == set(adapter(tmp_path / "prox"))
    assert free["rounds"][1]["train_loss"] != prox["rounds"][1]["train_loss"]
    # the exported global adapters moved less from the (shared) initial state under the proximal pull
    from fl import comm, models
    from fl.setup import prepare

    s = prepare(load_config(RECIPE, [*base, f"output_dir={tmp_path}"]), comm.Runtime())
    init = {k: v.detach().clone() for k, v in models.get_trainable_state(s.model).items()}
    moved = {
        name: sum(float((adapter(tmp_path / name)[k] - init[k]).norm() ** 2) for k in init) for name in ("free", "prox")
    }
    assert moved["prox"] < 0.5 * moved["free"]


def test_resume_with_server_optimizer_and_scaffold_is_bit_identical(tmp_path, tiny_overrides):
    """Yogi's moments, SCAFFOLD's server and client control variates and the sampling all come back
    from a checkpoint: 2 rounds + a resume to 3 equal 3 rounds. In this process (the kill under
    torchrun and its one-line error are tests/test_reliability.py's)."""
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name", "rounds"))]
    base += [
        "rounds=3",
        f"output_dir={tmp_path}",
        "server_optimizer=yogi",
        "server_lr=0.02",
        "scaffold=true",
        "clients_per_round=3",
    ]
    whole_and_resumed(base, tmp_path)
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert b["resumed_from"].endswith("round-0002")
    assert records(a) == records(b)
    x, y = adapter(tmp_path / "whole"), adapter(tmp_path / "cut")
    assert all(torch.equal(x[k], y[k]) for k in x)
    ckpt = load_file(tmp_path / "cut" / "checkpoints" / "round-0003" / "state.safetensors")
    assert any(k.startswith("server.opt.v.") for k in ckpt) and any(k.startswith("server.control.") for k in ckpt)
    assert {k.split(".")[1] for k in ckpt if k.startswith("client.")} <= {"0", "1", "2", "3"}
