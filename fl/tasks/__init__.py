"""Tasks: what a kind of learning problem owns (the model class, encoding and collation, the loss,
evaluation as metric sums, the metrics, the head, distillation targets). The round, the clients and
the strategy know none of it: they call the `Task` protocol.

- `classify` (`tasks/classify.py`): sequence classification (SST-2, CoLA, Rotten Tomatoes, your files).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from fl.config import Config
from fl.message import Message
from fl.models import ModelSpec

State = dict[str, torch.Tensor]


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

    def partition_labels(self, rows: Sequence[int]) -> list[int] | None:
        """What label-skewed partitions split on (None: the task has no labels)."""
        ...

    # ---- training -------------------------------------------------------------------------------
    def train_batches(self, data: Any, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(mean loss of the batch, examples in it); the batch is on the model's device."""
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

    # ---- distillation ---------------------------------------------------------------------------
    def kd_targets(self, model: nn.Module, data: Any, batch_size: int, device: torch.device) -> State:
        """What a teacher (or the clients' ensemble) sends for the rows of `data`."""
        ...

    def kd_like(self, num_rows: int, device: torch.device) -> State:
        """Zeros of `kd_targets` for that many rows."""
        ...

    def kd_forward(self, model: nn.Module, data: Any, rows: Sequence[int], device: torch.device,
                   attentions: bool = False) -> dict[str, Any]:  # fmt: skip
        """The model's outputs that distillation compares: logits [N, K] (+ labels, attentions, mask)."""
        ...


def build_task(cfg: Config) -> Task:
    """The task of a config, its data loaded and checked."""
    from fl.tasks.classify import ClassifyTask

    return ClassifyTask.from_config(cfg)
