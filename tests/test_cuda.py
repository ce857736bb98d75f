"""The GPU paths (`pytest -m cuda` on a machine with a CUDA GPU; skipped elsewhere).

They walk what a CPU cannot: the one-process run on the GPU, torchrun with ranks sharing the GPU
(gloo with the tensors on cuda:0), the NCCL relay with the only client rank owning the GPU and
rank 0 on the CPU, both KD placements, and resume on the GPU (and of a GPU checkpoint on the CPU).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fl.config.recipe import load_config
from fl.job import run_document as run
from tests.helpers import RECIPE, run_torchrun

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

TIMING = ("time_", "wire_bytes", "bytes_eval")


def records(doc: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in doc["rounds"]]


def base(tiny_overrides, tmp_path, *extra: str) -> list[str]:
    return [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name"))] + [
        f"output_dir={tmp_path}",
        *extra,
    ]


def same_metrics(a: dict, b: dict) -> None:
    for x, y in zip(a["rounds"], b["rounds"], strict=True):
        assert x["test_loss"] == pytest.approx(y["test_loss"], abs=1e-4)
        assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1e-4)


def test_simulation_and_torchrun_on_one_gpu_give_the_same_metrics(tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, "device=cuda")
    sim = run(load_config(RECIPE, [*over, "run_name=sim"]))
    assert sim["env"]["device"] == "cuda:0"
    proc = run_torchrun(3, [*over, "run_name=dist"])  # 2 client ranks share the GPU: the 'shared' layout
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert dist["env"]["layout"]["case"] == "shared" and dist["env"]["backend"] == "gloo"
    same_metrics(sim, dist)


def test_nccl_relay_with_the_client_rank_owning_the_gpu_matches_gloo(tmp_path, tiny_overrides):
    """One GPU, rank 0 on the CPU, one client rank on cuda:0: every adapter byte crosses NCCL
    (a communicator of one rank) and rank 1 relays to rank 0 over gloo."""
    over = base(tiny_overrides, tmp_path, "device=cuda", "num_clients=2")
    over = [o for o in over if o != "num_clients=4"]
    nccl = run_torchrun(2, [*over, "server_device=cpu", "run_name=nccl"])
    assert nccl.returncode == 0, nccl.stderr[-3000:]
    gloo = run_torchrun(2, [*over, "client_allreduce=false", "run_name=gloo"])
    assert gloo.returncode == 0, gloo.stderr[-3000:]
    a = json.loads((tmp_path / "nccl" / "results.json").read_text())
    b = json.loads((tmp_path / "gloo" / "results.json").read_text())
    assert a["env"]["layout"]["client_backend"] == "nccl" and a["env"]["layout"]["case"] == "clients-own"
    same_metrics(a, b)


@pytest.mark.parametrize("placement", ["server", "clients"])
def test_fedkdlora_both_placements_on_the_gpu(tmp_path, tiny_overrides, tiny_model_dir, placement):
    from fl.cli import main

    # the tiny teacher has 2 layers: a 1-layer student (the recipe asks for 3 of MiniLM's 6)
    kd = base(
        tiny_overrides,
        tmp_path,
        "device=cuda",
        f"teacher_model={tiny_model_dir}",
        "teacher_pretrain_epochs=1",
        "kd_public_examples=16",
        "student_layers=1",
    )
    kd_recipe = str(RECIPE.parent / "fedkdlora.yaml")
    assert main(["pretrain-teacher", kd_recipe, *kd, "run_name=teacher"]) == 0
    proc = run_torchrun(
        3,
        [*kd, f"teacher_ckpt={tmp_path / 'teacher' / 'teacher'}", f"kd_placement={placement}", "run_name=kd"],
        RECIPE.parent / "fedkdlora.yaml",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert all(isinstance(r["teacher_test_accuracy"], float) for r in doc["rounds"])


def test_kill_and_resume_on_the_gpu_is_bit_identical_and_resumes_on_cpu(tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, "device=cuda", "rounds=3", "server_optimizer=adam", "server_lr=0.01")
    over = [o for o in over if o != "rounds=2"]
    assert run_torchrun(3, [*over, "run_name=whole"]).returncode == 0
    assert run_torchrun(3, [*over, "run_name=cut", "fault_inject=exit:rank=2:round=3"]).returncode != 0
    assert run_torchrun(3, [*over, "run_name=cut", "resume=true"]).returncode == 0
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert records(a) == records(b)
    x = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    y = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)
    # a checkpoint written on the GPU resumes on the CPU (device is a resumable key)
    cpu = [o.replace("device=cuda", "device=cpu") for o in over] + ["rounds=4", "run_name=cut", "resume=true"]
    cpu = [o for o in cpu if o != "rounds=3"]
    doc = run(load_config(RECIPE, cpu))
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2, 3, 4] and doc["env"]["device"] == "cpu"


def test_causal_lm_on_the_gpu_matches_torchrun_sharing_it(tmp_path, tiny_llama_dir, tiny_sft):
    from tests.conftest import lm_overrides

    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "one") + ["device=cuda", "max_new_tokens=2"]
    one = run(load_config(RECIPE, over))
    proc = run_torchrun(3, [o for o in over if not o.startswith("run_name")] + ["run_name=three"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    three = json.loads((tmp_path / "three" / "results.json").read_text())
    for x, y in zip(one["rounds"], three["rounds"], strict=True):
        assert x["test_loss"] == pytest.approx(y["test_loss"], abs=1e-4)


def test_qlora_trains_a_4bit_causal_lm(tmp_path, tiny_llama_dir, tiny_sft):
    pytest.importorskip("bitsandbytes")
    from tests.conftest import lm_overrides

    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "q") + [
        "device=cuda",
        "load_in_4bit=true",
        "max_new_tokens=0",
        "rounds=1",
    ]
    doc = run(load_config(RECIPE, over))
    assert doc["rounds"][1]["test_loss"] < doc["rounds"][0]["test_loss"] + 1.0
    assert (tmp_path / "q" / "adapter" / "adapter_model.safetensors").is_file()


def test_precision_auto_on_the_gpu_follows_its_bf16_support():
    from fl.models.precision import resolve_precision

    expect = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision("auto", torch.device("cuda:0")) == expect
