"""Clients of several ranks (`ranks_per_client=2`) under real torchrun (gloo): rank 0 + 2 clients x
2 ranks compute what clients of one rank compute (the simulation in this process, which equals a
torchrun job of one-rank clients: tests/test_server.py), each rank of a client trains on half of
every batch, the groups are recorded, every algorithm keeps working, and kill + resume is
bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import lm_overrides
from tests.helpers import RECIPE, run_inprocess, run_torchrun

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_overrides(tiny_overrides, tiny_model_nodrop_dir) -> list[str]:
    """The tiny overrides on the tiny BERT without dropout: each rank draws dropout for its own rows,
    one rank for the whole batch, so layouts compare exactly only without it."""
    return [o for o in tiny_overrides if not o.startswith("model=")] + [f"model={tiny_model_nodrop_dir}"]


def base(tiny_overrides, tmp_path, *extra) -> list[str]:
    keep = [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name", "num_clients"))]
    return [*keep, f"output_dir={tmp_path}", "num_clients=2", "lora_dropout=0", *extra]


def doc_of(path) -> dict:
    return json.loads((path / "results.json").read_text())


def pair(over: list[str], tmp_path, recipe=RECIPE) -> tuple[dict, dict]:
    """(clients of one rank: the simulation, in this process; 5 processes with clients of two ranks),
    same settings."""
    run_inprocess([*over, "run_name=k1"], recipe)
    two = run_torchrun(5, [*over, "run_name=k2", "ranks_per_client=2"], recipe)
    assert two.returncode == 0, two.stderr[-3000:]
    return doc_of(tmp_path / "k1"), doc_of(tmp_path / "k2")


def same_rounds(a: dict, b: dict, keys=("test_loss", "test_accuracy", "train_loss")) -> None:
    for x, y in zip(a["rounds"], b["rounds"], strict=True):
        for k in keys:
            if x.get(k) is not None:
                assert x[k] == pytest.approx(y[k], abs=1e-4), (k, x["round"])
        assert x["bytes_up"] == y["bytes_up"] and x["bytes_down"] == y["bytes_down"]


@pytest.mark.parametrize("scheme", ["fedlora", "fedavg"])
def test_two_ranks_per_client_compute_what_one_rank_does(scheme, tmp_path, tiny_overrides):
    extra = ["scheme=fedavg", "lr=1e-3"] if scheme == "fedavg" else []
    a, b = pair(base(tiny_overrides, tmp_path, *extra), tmp_path)
    same_rounds(a, b)
    assert b["env"]["client_groups"] == [
        {"ranks": [1, 2], "leader": 1, "clients": [0]},
        {"ranks": [3, 4], "leader": 3, "clients": [1]},
    ]
    shard = b["client_examples"]
    for rec in b["rounds"][1:]:  # each rank of a client trains on half of every batch of 16 (its shard: 80 rows)
        per = rec["examples_per_rank"]
        assert per["1"] + per["2"] == shard[0] and per["3"] + per["4"] == shard[1] and per["1"] == shard[0] // 2
        assert rec["examples_trained"] == sum(shard)
    saved = "adapter" if scheme == "fedlora" else "model"
    x = load_file(next((tmp_path / "k1" / saved).glob("*.safetensors")))
    y = load_file(next((tmp_path / "k2" / saved).glob("*.safetensors")))
    assert max(float((x[k] - y[k]).abs().max()) for k in x) < 1e-4


def test_algorithms_keep_working_on_clients_of_two_ranks(tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, "scaffold=true", "server_optimizer=adam", "server_lr=0.02", "prox_mu=0.1")
    a, b = pair(over, tmp_path)
    same_rounds(a, b)


def test_dp_on_clients_of_two_ranks(tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, "dp_clip=0.5", "dp_noise_multiplier=0.5", "dp_delta=1e-3")
    a, b = pair(over, tmp_path)
    same_rounds(a, b, keys=("test_loss", "test_accuracy", "dp_epsilon"))


def test_causal_lm_clients_of_two_ranks(tmp_path, tiny_llama_dir, tiny_sft):
    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "x")
    over = [o for o in over if not o.startswith(("run_name", "num_clients"))] + ["num_clients=2", "max_new_tokens=2"]
    a, b = pair(over, tmp_path)
    same_rounds(a, b, keys=("test_loss", "train_loss"))


def test_kill_and_resume_with_two_ranks_per_client(tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, "ranks_per_client=2", "rounds=3")
    over = [o for o in over if o != "rounds=2"]
    assert run_torchrun(5, [*over, "run_name=whole"]).returncode == 0
    cut = run_torchrun(5, [*over, "run_name=cut", "fault_inject=exit:rank=2:round=3"])  # a rank that is no leader
    assert cut.returncode != 0
    line = [ln for ln in cut.stderr.splitlines() if ln.startswith("error: stopped during round 3")]
    assert len(line) == 1 and "resume=true" in line[0], cut.stderr[-2000:]
    resumed = run_torchrun(5, [*over, "run_name=cut", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kd_on_clients_of_two_ranks(tmp_path, tiny_model_nodrop_dir, tiny_task):
    from fl.cli import main

    kd = RECIPE.parent / "fedkdlora.yaml"
    train, test = tiny_task
    over = [
        f"model={tiny_model_nodrop_dir}",
        f"teacher_model={tiny_model_nodrop_dir}",
        "task=csv",
        f"train_file={train}",
        f"test_file={test}",
        "num_clients=2",
        "rounds=1",
        "batch_size=16",
        "lr=5e-3",
        "max_length=16",
        "lora_r=4",
        "teacher_data_pct=30",
        "teacher_pretrain_epochs=1",
        "student_layers=1",
        "kd_public_examples=24",
        f"output_dir={tmp_path}",
        "num_threads=1",
        "lora_dropout=0",
        "kd_placement=clients",
    ]
    assert main(["pretrain-teacher", str(kd), *over, "run_name=teacher"]) == 0
    over.append(f"teacher_ckpt={tmp_path / 'teacher' / 'teacher'}")
    a, b = pair(over, tmp_path, kd)
    same_rounds(a, b, keys=("test_loss", "teacher_test_loss"))
