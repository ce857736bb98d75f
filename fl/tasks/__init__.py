"""Tasks: what a kind of learning problem owns (the model class, encoding and collation, the loss,
evaluation as metric sums, the metrics, the head, distillation targets). The round, the clients and
the strategy know none of it: they call the `Task` protocol.

- `classify` (`tasks/classify.py`): sequence classification (SST-2, CoLA, Rotten Tomatoes, your files).
- `causal_lm` (`tasks/causal_lm.py`, with `fl/data/lm_rows.py` and `lm_encode.py`): decoder LLMs, instruction
  tuning and LM fine-tuning, perplexity and generated-answer accuracy, top-k KD on token logits.
- `order` (the one seeded batch order), `metrics` (classification's), `kd_losses` (the KD losses a
  task computes).
- `choices` (a multiple-choice item scored by log-likelihood, acc / acc_norm as
  lm-evaluation-harness computes them) and `answers` (GSM8K's and FlowerTune's answer extraction):
  the scoring rules of the benchmarks in `fl.data.benchmarks` (issue 35; not yet run each round).

May import config, data, models and `fl.comm.message` (evaluation returns metric sums as a
Message); never ranks, collectives, strategies or the client runners.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from fl.comm.message import Message
from fl.config import Config
from fl.config.components import instantiate
from fl.errors import ConfigError
from fl.models import ModelSpec

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SplitSummary:
    """What a rank that holds no rows knows of a split: its size, and the labels of its rows (a
    classifier's, for the partition table). It stands in for `Task.train` / `Task.test` in a task's
    `without_rows` copy: `len` works, reading rows does not."""

    size: int
    labels: list[int] | None = None

    def __len__(self) -> int:
        return self.size

    def subset(self, rows: Sequence[int]) -> Any:
        raise RuntimeError("this rank holds no rows of the data (a task's without_rows copy): it cannot subset them")

    @property
    def groups(self) -> list[str] | None:
        raise RuntimeError("this rank holds no rows of the data (a task's without_rows copy): it has no groups")


class Task(Protocol):
    """One learning problem: its data and everything that depends on what a row and a model output are."""

    name: str  # the data source (e.g. rotten_tomatoes)
    metric: str  # the headline metric (a key of `metrics`)
    columns: tuple[str, ...]  # record keys the console shows per round, after test_loss
    train: Any  # rows (len, subset)
    test: Any

    # ---- model and data -------------------------------------------------------------------------
    def build_model(self, spec: ModelSpec) -> tuple[nn.Module, Any, str]:
        """(model, tokenizer, resolved path), LoRA-wrapped when spec.lora is set."""
        ...

    def load_teacher(self, source: str, seed: int, eager_attention: bool) -> tuple[nn.Module, Any, str]: ...

    def encode(self, tokenizer: Any, rows: Any) -> Any:
        """Rows -> token ids (the task's `Encoded`, with `len` and `subset`)."""
        ...

    def without_rows(self) -> Task:
        """A copy holding no rows and no tokenizer (`SplitSummary` for train and test): what rank 0 of a
        model-free job receives from rank 1 instead of loading the data. Its lengths, partition labels,
        metrics, `eval_template` and `build_model` work like the full task's; picklable, a few bytes a
        train row (a classifier keeps every train label)."""
        ...

    def partition_labels(self, rows: Sequence[int]) -> list[int] | None:
        """What label-skewed partitions split on (None: the task has no labels)."""
        ...

    def partition_groups(self, rows: Sequence[int]) -> list[str] | None:
        """The rows' natural groups (partition=natural: e.g. the play), or None."""
        ...

    # ---- training -------------------------------------------------------------------------------
    def train_batches(self, data: Any, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(mean loss of the batch, examples in it); the batch is on the model's device."""
        ...

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms a batch's loss averages (rows, tokens): a client of several ranks weighs its slices by it."""
        ...

    def is_head(self, name: str) -> bool:
        """Whether a parameter belongs to the task's head (for head_lr)."""
        ...

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_sums(self, model: nn.Module, data: Any, batch_size: int, device: torch.device) -> Message:
        """Metric sums over a shard of the test rows: summed over shards they give the metrics exactly."""
        ...

    def eval_template(self, device: torch.device) -> Message:
        """Zeros of `eval_sums` (a rank that scores no rows)."""
        ...

    def metrics(self, sums: Message) -> dict[str, float]: ...

    # ---- distillation ----------------------------------------------------------------------
    # rows are encoded public rows (`data`); what travels is named tensors (State)
    def kd_targets(self, model: nn.Module, data: Any, batch_size: int, device: torch.device) -> State:
        """What a teacher sends for the rows of `data` (classify: logits; causal_lm: top-k probabilities)."""
        ...

    def kd_like(self, data: Any, device: torch.device) -> State:
        """Zeros of `kd_targets` for those rows."""
        ...

    def kd_reply(self, model: nn.Module, data: Any, targets: State, batch_size: int, device: torch.device) -> Any:
        """What a client sends back for the rows, given the teacher's targets (one tensor)."""
        ...

    def kd_reply_like(self, data: Any, device: torch.device) -> torch.Tensor: ...

    def kd_as_targets(self, ensemble: torch.Tensor, sent: State | None) -> State:
        """The clients' mean reply as targets for the teacher (`sent`: what the teacher sent this round)."""
        ...

    def kd_kl(
        self, model: nn.Module, data: Any, rows: Sequence[int], targets: State, temperature: float, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """T^2 KL(targets || model) on a batch of rows, and the model's outputs there (logits, labels)."""
        ...

    def kd_forward(
        self, model: nn.Module, data: Any, rows: Sequence[int], device: torch.device, attentions: bool = False
    ) -> dict[str, Any]:
        """The model's outputs that distillation compares: logits [N, K] (+ labels, attentions, mask)."""
        ...


REQUIRED = (
    "name",
    "metric",
    "columns",
    "train",
    "test",
    "build_model",
    "encode",
    "without_rows",
    "partition_labels",
    "partition_groups",
    "train_batches",
    "loss",
    "batch_weight",
    "is_head",
    "eval_sums",
    "eval_template",
    "metrics",
)  # what every run calls; the kd_* methods only FedKDLoRA


def check_task(task: Any, key: str) -> Task:
    """`task` if it has what every run calls of a Task, else a one-line ConfigError naming what is missing."""
    missing = [name for name in REQUIRED if not hasattr(task, name)]
    if missing:
        raise ConfigError(
            f"{key}: a {type(task).__name__} is not an fl.Task (it has no {', '.join(missing[:4])}); implement "
            "the fl.Task protocol or subclass a built-in task (docs/extending.md)"
        )
    return task


def build_task(cfg: Config, task: Task | None = None) -> Task:
    """The task of a run, its data loaded and checked: `task` (an object from `fl.run(task=...)`), the
    config's task component, or the built-in task of `task_kind` (classify, causal_lm), all built by
    `fl.config.components.instantiate`."""
    if task is not None:
        return check_task(task, "task")
    if isinstance(cfg.task, dict):
        return check_task(instantiate(cfg.task, "task", config=cfg), "task")
    return instantiate({"_component_": cfg.task_kind}, "task_kind", config=cfg)


from fl.tasks.benchmark_rounds import BenchmarkRounds as BenchmarkRounds  # noqa: E402  (it imports tasks.metrics)
