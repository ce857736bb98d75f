"""Labelled text data: train and test splits with integer labels, capped, shuffled and checked.

Rows come from `fl.data.sources` (everything through `datasets`). What a task does with them (tokens,
batches, the loss) is the task's (`fl.tasks`). Nothing here knows about models, ranks or collectives.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl.config import Config
from fl.data import sources
from fl.errors import ConfigError

RT_TEST_SIZE = 1000  # held-out Rotten Tomatoes test rows (label-stratified)
RT_SPLIT_SEED = 1234  # fixed, so every run of every scheme scores on the same test rows


@dataclass
class TextDataset:
    """One split: a `datasets.Dataset` with columns text, [text_pair] and label (ints 0..K-1)."""

    ds: Any
    _labels: list[int] | None = field(default=None, repr=False)

    @classmethod
    def from_lists(cls, texts: Sequence[str], labels: Sequence[int], pairs: Sequence[str] | None = None) -> TextDataset:
        from datasets import Dataset

        cols = {"text": list(texts), "label": list(labels), **({"text_pair": list(pairs)} if pairs else {})}
        return cls(Dataset.from_dict(cols))

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def labels(self) -> list[int]:
        if self._labels is None:
            self._labels = [int(y) for y in self.ds["label"]]
        return self._labels

    @property
    def texts(self) -> list[str]:
        return list(self.ds["text"])

    @property
    def pairs(self) -> list[str] | None:
        return list(self.ds["text_pair"]) if "text_pair" in self.ds.column_names else None

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return TextDataset(self.ds.select(list(indices)))


@dataclass
class LabelledData:
    name: str
    train: TextDataset
    test: TextDataset
    num_labels: int
    metric: str  # the headline metric: "accuracy" or "mcc"
    label_names: list[str] | None = None  # string labels, in id order


# ---- the task -------------------------------------------------------------------------------
def rotten_tomatoes() -> tuple[TextDataset, TextDataset]:
    """The 8,530 Rotten Tomatoes sentences; a fixed seeded shuffle, then 1,000 stratified test rows.

    The package stores the rows sorted by label, so the shuffle is what makes the public slice and
    contiguous client shards hold both classes; a second shuffle of train keeps a small
    max_train_samples from seeing one class. The rows are the same as with the earlier loader.
    """
    ds = sources.load_reviews_csv()
    rows = [i for i, s in enumerate(ds["source"]) if s == "rotten_tomatoes"]
    labels = ds["label"]
    random.Random(RT_SPLIT_SEED).shuffle(rows)
    taken = {0: 0, 1: 0}
    test_rows, train_rows = [], []
    for i in rows:
        y = int(labels[i])
        (test_rows if taken[y] < RT_TEST_SIZE // 2 else train_rows).append(i)
        taken[y] += taken[y] < RT_TEST_SIZE // 2
    random.Random(RT_SPLIT_SEED + 1).shuffle(train_rows)
    ds = sources.standard_columns(ds, "text", None, "label")
    return TextDataset(ds.select(train_rows)), TextDataset(ds.select(test_rows))


def label_ids(train: Any, test: Any, test_name: str) -> tuple[Any, Any, list[str] | None]:
    """Integer labels as written (0..K-1), or strings mapped to ids in sorted order."""
    names = sorted({str(y).strip() for y in train["label"]})
    as_int = {n: int(float(n)) for n in names if re.fullmatch(r"[+-]?\d+(\.0*)?", n)}
    mapping = as_int if len(as_int) == len(names) else {n: i for i, n in enumerate(names)}
    unknown = sorted({str(y).strip() for y in test["label"]} - set(mapping))
    if unknown:
        raise ConfigError(
            f"{test_name}: label values {unknown[:5]} never occur in the training data; "
            "test labels must be a subset of the training labels"
        )
    if all(isinstance(y, int) and not isinstance(y, bool) for y in train["label"][:1000]) and mapping is as_int:
        return train, test, None

    def ids(batch: dict[str, list]) -> dict[str, list[int]]:
        return {"label": [mapping[str(y).strip()] for y in batch["label"]]}

    train, test = (d.map(ids, batched=True) for d in (train, test))
    return train, test, (None if mapping is as_int else names)


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def check_leakage(train: TextDataset, test: TextDataset, max_fraction: float = 0.05) -> None:
    """Refuse a test set that largely repeats training sentences (e.g. Rotten Tomatoes vs SST-2 dev)."""
    seen = {_normalise(t) for t in train.texts}
    shared = sum(_normalise(t) in seen for t in test.texts)
    if len(test) and shared / len(test) > max_fraction:
        raise ConfigError(
            f"{shared} of {len(test)} test sentences also occur in the training data; "
            "score on a test set disjoint from train (e.g. never train on rotten_tomatoes and test on SST-2 dev)"
        )


def load_labelled(cfg: Config) -> LabelledData:
    """Load train and test for `cfg.task`, apply the sample caps and check them."""
    names = None
    if cfg.task == "rotten_tomatoes":
        train, test = rotten_tomatoes()
    else:
        if cfg.task in sources.GLUE_LAYOUT and cfg.data_dir:
            if not Path(cfg.data_dir).is_dir():
                raise ConfigError(f"data_dir={cfg.data_dir!r} is not a folder; point it at the GLUE folder")
            raw = sources.load_glue_dir(cfg.task, cfg.data_dir)
        elif cfg.task in sources.GLUE_LAYOUT:
            raw = sources.load_glue_hub(cfg.task)
        elif cfg.task == "hf":
            splits = (cfg.train_split, cfg.test_split)
            raw = sources.load_hub(
                cfg.dataset or "", cfg.dataset_config, splits, cfg.text_column, cfg.text_pair_column, cfg.label_column
            )
        else:
            raw = sources.load_files(
                cfg.train_file or "", cfg.test_file or "", cfg.text_column, cfg.text_pair_column, cfg.label_column
            )
        tr, te, names = label_ids(raw[0], raw[1], cfg.test_file or cfg.task)
        train, test = TextDataset(tr), TextDataset(te)
    if cfg.shuffle_train:  # a seeded order: the public slice and contiguous shards then sample every source
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        train = train.subset(order)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.subset(range(cfg.max_train_samples))
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(test):
        test = test.subset(range(cfg.max_eval_samples))
    if len(train) == 0 or len(test) == 0:
        which = "training" if len(train) == 0 else "test"
        raise ConfigError(f"the {which} data of task={cfg.task} is empty; check the files")
    classes = sorted(set(train.labels))
    if len(classes) < 2:
        raise ConfigError(f"the training data has a single label ({classes[0]}); a classifier needs two or more")
    if classes[0] < 0:
        raise ConfigError(f"label {classes[0]} is negative; labels must be 0..K-1 or strings")
    check_leakage(train, test)
    num_labels = max(max(train.labels), max(test.labels)) + 1
    return LabelledData(cfg.task, train, test, num_labels, "mcc" if cfg.task == "cola" else "accuracy", names)
