"""Sequence classification: `AutoModelForSequenceClassification`, integer labels, cross-entropy, and
accuracy / MCC / F1 from a confusion matrix.

Rows come from `fl.data.labelled` (every source through `datasets`). Tokenization runs through
`Dataset.map`, whose cache serves a second run of the same data and tokenizer without tokenizing
again; padding happens per batch, to the batch's longest row (`group_by_length` puts rows of similar
length together: `fl.tasks.order`). Evaluation sums, per shard of the
test rows, the cross-entropy and the confusion matrix [K, K]: summed over shards (one reduce)
they give the metrics of the whole test set exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fl import models
from fl.comm.message import Message
from fl.config import Config
from fl.data import sources
from fl.data.labelled import LabelledData, TextDataset, load_labelled
from fl.errors import ConfigError
from fl.tasks import SplitSummary
from fl.tasks.kd_losses import kl_divergence
from fl.tasks.metrics import classification_metrics, confusion_matrix
from fl.tasks.order import epoch_batches

HEAD_MARKERS = ("classifier", "score.", "modules_to_save")  # parameter names of a classification head
State = dict[str, torch.Tensor]


@dataclass
class Encoded:
    """Token ids without padding, and the labels."""

    input_ids: list[list[int]]
    labels: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: Sequence[int]) -> Encoded:
        return Encoded([self.input_ids[i] for i in rows], [self.labels[i] for i in rows], self.pad_id)


def encode(tokenizer: Any, data: TextDataset, max_length: int) -> Encoded:
    """Tokenize through `Dataset.map`: cached by the data's and the tokenizer's fingerprints."""
    sources.quiet_datasets()
    pad = tokenizer.pad_token_id or 0
    if len(data) == 0:
        return Encoded([], [], pad)
    has_pair = "text_pair" in data.ds.column_names

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [str(t) for t in batch["text"]]
        pairs = [str(t) for t in batch["text_pair"]] if has_pair else None
        return {"input_ids": tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]}

    drop = [c for c in data.ds.column_names if c != "label"]
    mapped = data.ds.map(tokenize, batched=True, remove_columns=drop)
    return Encoded(list(mapped["input_ids"]), [int(y) for y in mapped["label"]], pad)


def collate(enc: Encoded, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the chosen rows to their longest: input_ids / attention_mask [B, L], labels [B]."""
    width = max(len(enc.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(rows):
        seq = enc.input_ids[i]
        ids[j, : len(seq)] = torch.tensor(seq)
        mask[j, : len(seq)] = 1
    labels = torch.tensor([enc.labels[i] for i in rows], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_batches(
    enc: Encoded, batch_size: int, seed: int, group_by_length: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch in a seeded random order (`fl.tasks.order`)."""
    for rows in epoch_batches([len(x) for x in enc.input_ids], batch_size, seed, group_by_length):
        yield collate(enc, rows)


def eval_batches(enc: Encoded, batch_size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Rows sorted by length (less padding); yields (row indices, batch)."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, collate(enc, rows)


@torch.inference_mode()
def predict(model: nn.Module, data: Encoded, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits [N, K] (fp32) in the data's row order, on `device`."""
    model.eval()
    out: torch.Tensor | None = None
    for rows, batch in eval_batches(data, batch_size):
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        if out is None:
            out = torch.zeros(len(data), logits.shape[-1], device=device)
        out[torch.tensor(rows, device=device)] = logits
    return out if out is not None else torch.zeros(0, 0, device=device)


def load_classifier(path: str, num_labels: int, seed: int, eager_attention: bool = False) -> nn.Module:
    """AutoModelForSequenceClassification with a seeded head (identical on every rank).

    eager_attention: the plain attention kernel, which can return attention maps (for KD).
    """
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    extra = {"attn_implementation": "eager"} if eager_attention else {}
    model = models.load_pretrained(AutoModelForSequenceClassification, path, num_labels=num_labels, **extra)
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


@dataclass
class ClassifyTask:
    """Sequence classification over labelled rows (see the module docstring)."""

    data: LabelledData
    max_length: int
    group_by_length: bool = False  # training batches of rows of similar length (fl.tasks.order)

    @classmethod
    def from_config(cls, config: Config) -> ClassifyTask:
        return cls(load_labelled(config), config.max_length, config.group_by_length)

    @classmethod
    def for_rows(cls, train: TextDataset, test: TextDataset, max_length: int, name: str = "rows") -> ClassifyTask:
        """A task over rows already in hand (benchmarks, tests)."""
        num_labels = max(max(train.labels), max(test.labels)) + 1
        return cls(LabelledData(name, train, test, num_labels, "accuracy"), max_length)

    def without_rows(self) -> ClassifyTask:
        """See `Task.without_rows`: the train labels stay (the partition table counts them)."""
        train, test = SplitSummary(len(self.train), list(self.train.labels)), SplitSummary(len(self.test))
        return replace(self, data=replace(self.data, train=train, test=test))  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def metric(self) -> str:
        return self.data.metric

    @property
    def train(self) -> TextDataset:
        return self.data.train

    @property
    def test(self) -> TextDataset:
        return self.data.test

    @property
    def num_labels(self) -> int:
        return self.data.num_labels

    columns = ("test_accuracy", "test_mcc", "test_f1")

    # ---- model and data -------------------------------------------------------------------------
    def build_model(self, spec: models.ModelSpec) -> tuple[nn.Module, Any, str]:
        models.quiet_transformers()
        path = models.resolve_model(spec.source)
        model = load_classifier(path, self.num_labels, spec.seed, spec.eager_attention)
        if spec.keep_layers:
            model = models.keep_layers(model, spec.keep_layers)
        if spec.dropout is not None:
            model = models.set_dropout(model, spec.dropout)
        tokenizer = models.load_tokenizer(path)
        if spec.lora is not None:
            model = models.wrap_lora(model, spec.lora, "SEQ_CLS")
        return model, tokenizer, path

    def load_teacher(self, source: str, seed: int, eager_attention: bool) -> tuple[nn.Module, Any, str]:
        """The teacher checkpoint; its label count must match the task's."""
        from transformers import AutoConfig

        models.quiet_transformers()
        path = models.resolve_model(source)
        trained = AutoConfig.from_pretrained(path).num_labels
        if trained != self.num_labels:
            raise ConfigError(
                f"teacher {path!r} has {trained} labels but the task has {self.num_labels}; "
                "pre-train a teacher on this task with `fl pretrain-teacher`"
            )
        return load_classifier(path, self.num_labels, seed, eager_attention), models.load_tokenizer(path), path

    def encode(self, tokenizer: Any, rows: TextDataset) -> Encoded:
        return encode(tokenizer, rows, self.max_length)

    def partition_labels(self, rows: Sequence[int]) -> list[int] | None:
        labels = self.train.labels
        return [labels[i] for i in rows]

    def partition_groups(self, rows: Sequence[int]) -> list[str] | None:
        return None

    # ---- training -------------------------------------------------------------------------------
    def train_batches(self, data: Encoded, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        return train_batches(data, batch_size, seed, self.group_by_length)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        labels = batch.pop("labels")
        logits = model(**batch).logits  # [B, K]
        return F.cross_entropy(logits.float(), labels), labels.numel()

    def row_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(each row's loss [N], each row's weight [N]): the batch's mean loss is their ratio of sums."""
        labels = batch.pop("labels")
        losses = F.cross_entropy(model(**batch).logits.float(), labels, reduction="none")
        return losses, torch.ones_like(losses)

    def join(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batches of equal row counts padded to one width and stacked in order (client-major)."""
        width = max(b["input_ids"].shape[1] for b in batches)
        pad = {"input_ids": 0, "attention_mask": 0}  # masked positions: their id changes no real row's output
        out = {
            k: torch.cat([F.pad(b[k], (0, width - b[k].shape[1]), value=pad[k]) for b in batches])
            for k in ("input_ids", "attention_mask")
        }
        out["labels"] = torch.cat([b["labels"] for b in batches])
        return out

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """The loss's terms in a batch: its rows (the loss is their mean)."""
        return int(batch["labels"].numel())

    def is_head(self, name: str) -> bool:
        return any(m in name for m in HEAD_MARKERS)

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_template(self, device: torch.device) -> Message:
        k = self.num_labels
        return Message({"eval": {"confusion": torch.zeros(k, k, device=device)}}, {"eval.loss_sum": 0.0})

    @torch.inference_mode()
    def eval_sums(self, model: nn.Module, data: Encoded, batch_size: int, device: torch.device) -> Message:
        """Cross-entropy summed over the rows, and the confusion matrix (true class x predicted)."""
        sums = self.eval_template(device)
        if len(data) == 0:
            return sums
        logits = predict(model, data, batch_size, device)
        target = torch.tensor(data.labels, device=device)
        sums.scalars["eval.loss_sum"] = float(F.cross_entropy(logits, target, reduction="sum"))
        cm = confusion_matrix(logits.argmax(dim=-1), target, self.num_labels)
        sums.parts["eval"]["confusion"] += cm.to(torch.float32)
        return sums

    def metrics(self, sums: Message) -> dict[str, float]:
        """Mean cross-entropy, accuracy, MCC and F1 from the summed confusion matrix."""
        cm = sums.parts["eval"]["confusion"].round().long().cpu()
        return classification_metrics(cm, sums.scalars["eval.loss_sum"])

    # ---- distillation ----------------------------------------------------------------------
    def kd_targets(self, model: nn.Module, data: Encoded, batch_size: int, device: torch.device) -> State:
        return {"logits": predict(model, data, batch_size, device)}  # [P, K]

    def kd_like(self, data: Encoded, device: torch.device) -> State:
        return {"logits": torch.zeros(len(data), self.num_labels, device=device)}

    def kd_reply(self, model: nn.Module, data: Encoded, targets: State, batch_size: int, device: torch.device):
        """What a client sends up: its own logits on the public rows [P, K]."""
        return predict(model, data, batch_size, device)

    def kd_reply_like(self, data: Encoded, device: torch.device) -> torch.Tensor:
        return torch.zeros(len(data), self.num_labels, device=device)

    def kd_as_targets(self, ensemble: torch.Tensor, sent: State | None) -> State:
        """The clients' mean reply as targets for the teacher: their mean logits."""
        return {"logits": ensemble}

    def kd_kl(
        self,
        model: nn.Module,
        data: Encoded,
        rows: Sequence[int],
        targets: State,
        temperature: float,
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """T^2 KL(targets || model) on the rows, and the model's outputs there (logits, labels)."""
        out = self.kd_forward(model, data, rows, device)
        return kl_divergence(out["logits"], targets["logits"][list(rows)].to(device), temperature), out

    def kd_forward(
        self, model: nn.Module, data: Encoded, rows: Sequence[int], device: torch.device, attentions: bool = False
    ) -> dict[str, Any]:
        batch = {k: v.to(device) for k, v in collate(data, rows).items()}
        labels = batch.pop("labels")
        out = model(**batch, output_attentions=True) if attentions else model(**batch)
        return {
            "logits": out.logits,
            "labels": labels,
            "attentions": out.attentions if attentions else None,
            "mask": batch["attention_mask"],
        }
