"""Reliability with real processes: kill a client and resume bit for bit, reject poisoned updates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fl.config.recipe import load_config
from fl.job import run_document as run
from tests.helpers import RECIPE, hand_rounds, run_torchrun

TIME_KEYS = {
    "time_s",
    "time_train_s",
    "time_idle_s",
    "time_comm_s",
    "time_aggregate_s",
    "time_server_kd_s",
    "time_eval_s",
    "time_wait_s",
}


def _records(doc):
    return [{k: v for k, v in rec.items() if k not in TIME_KEYS} for rec in doc["rounds"]]


@pytest.mark.slow
def test_killed_client_then_resume_is_bit_identical(tmp_path, tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name", "rounds"))]
    base += ["rounds=3", f"output_dir={tmp_path}"]
    ok = run_torchrun(3, [*base, "run_name=whole"])
    assert ok.returncode == 0, ok.stderr[-2000:]

    killed = run_torchrun(3, [*base, "run_name=cut", "fault_inject=exit:rank=2:round=3"])
    assert killed.returncode != 0
    errors = [line for line in killed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "stopped during round 3" in errors[0] and "resume=true" in errors[0]
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert [r["round"] for r in cut["rounds"]] == [0, 1, 2] and cut["status"] == "interrupted"
    assert cut["status_reason"]  # why it stopped (the failed collective's first line)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["round-0001", "round-0002"]

    resumed = run_torchrun(3, [*base, "run_name=cut", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    done = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert done["resumed_from"].endswith("round-0002")
    assert _records(done) == _records(whole)
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_client_is_rejected_and_left_out(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith("output_dir")]
    over += [
        f"output_dir={tmp_path}",
        "fault_inject=nan:client=1:round=*",
        "partition=dirichlet",
        "dirichlet_alpha=1.0",
    ]
    doc = run(load_config(RECIPE, over))
    assert [list(r.get("rejected_clients")) for r in doc["rounds"][1:]] == [["1"], ["1"]]
    assert doc["rounds"][1]["rejected_clients"]["1"] == "non-finite values"
    assert doc["rounds"][-1]["num_examples"] == sum(doc["client_examples"]) - doc["client_examples"][1]
    expected = hand_rounds(load_config(RECIPE, over), rounds=2, skip=frozenset({1}))[-1]
    got = load_file(tmp_path / "tiny" / "adapter" / "adapter_model.safetensors")
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], atol=1e-6, rtol=0)
    clean = run(
        load_config(
            RECIPE, [*over[:-3], f"output_dir={tmp_path / 'clean'}", "partition=dirichlet", "dirichlet_alpha=1.0"]
        )
    )
    assert clean["rounds"][-1]["rejected_clients"] == {}


def test_every_update_rejected_keeps_the_global_model(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + [
        f"output_dir={tmp_path}",
        "max_update_norm=1e-12",
    ]
    doc = run(load_config(RECIPE, over))
    assert all(list(r["rejected_clients"]) == ["0", "1", "2", "3"] for r in doc["rounds"][1:])
    assert doc["rounds"][1]["rejected_clients"]["0"].startswith("update norm above max_update_norm")
    assert doc["rounds"][-1]["test_loss"] == doc["rounds"][0]["test_loss"]
    assert doc["rounds"][-1]["train_loss"] is None


def test_the_all_rejected_message_appears_only_when_all_were_rejected(tmp_path, tiny_overrides, capsys):
    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + [f"output_dir={tmp_path}"]
    run(load_config(RECIPE, over))
    assert "every client update was rejected" not in capsys.readouterr().out
    run(load_config(RECIPE, [*over, "run_name=all", "max_update_norm=1e-12"]))
    assert capsys.readouterr().out.count("every client update was rejected") == 2  # rounds 1 and 2
