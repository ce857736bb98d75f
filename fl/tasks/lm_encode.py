"""Token ids for causal-LM rows: chat rows as prompt + response with the loss on the response
(labels -100 elsewhere), packed text blocks as they are, and the batches both make.

Truncation never drops a whole response: a row whose prompt alone leaves no room for a response
token in `max_length` is an error naming the row (`long_prompts=error`, the default) or is left out
of the data when it is loaded, and counted (`long_prompts=skip`, `fitting_rows`); a response that
does not fit is cut at `max_length` and counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fl.data.lm_rows import PLAIN_MULTI, PLAIN_TURNS, LMRows
from fl.errors import ConfigError
from fl.tasks.order import epoch_batches

IGNORE = -100  # label of a position the loss does not count


@dataclass
class LMEncoded:
    """Token ids and labels per row; for chat rows also the prompt ids and the reference answer."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    pad_id: int
    prompts: list[list[int]] | None = None  # chat rows: the prompt alone (generation starts there)
    answers: list[str] | None = None  # chat rows: the last assistant turn's text
    counts: dict[str, int] = field(default_factory=dict)  # skipped / truncated rows

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, rows: Sequence[int]) -> LMEncoded:
        pick = lambda xs: [xs[i] for i in rows] if xs is not None else None  # noqa: E731
        return LMEncoded(pick(self.input_ids), pick(self.labels), self.pad_id, pick(self.prompts), pick(self.answers))


def _ids(out: Any) -> list[int]:
    """apply_chat_template / tokenizer output as a list of ids (transformers 4 and 5 differ)."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out[0] if out and isinstance(out[0], list) else out)


def render_plain(messages: list[dict], add_generation_prompt: bool) -> str:
    """fl's plain template (tokenizers without a chat template): see `fl.data.lm_rows`."""
    turns = PLAIN_TURNS if len(messages) <= 2 and messages[0]["role"] == "user" else PLAIN_MULTI
    text = "".join(turns.get(m["role"], PLAIN_MULTI["user"]).format(m["content"]) for m in messages)
    if add_generation_prompt and turns is PLAIN_MULTI:
        text += "### Assistant:\n"
    return text


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The token ids of `messages` followed by the opening of an assistant turn."""
    if tokenizer.chat_template:
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return _ids(tokenizer(render_plain(messages, add_generation_prompt=True))["input_ids"])


def chat_row(tokenizer: Any, messages: list[dict], train_on_prompt: bool) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, labels, prompt ids) of one conversation: every assistant turn is trained, each
    ending with EOS; the prompt is everything before the last assistant turn."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    prompt: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = prompt_ids(tokenizer, messages[:i])
        if before[: len(ids)] != ids:  # a template that rewrites earlier turns: keep what was built
            before = ids + before[len(ids) :]
        reply = _ids(tokenizer(str(m["content"]), add_special_tokens=False)["input_ids"])
        reply = reply + [eos] if eos is not None and (not reply or reply[-1] != eos) else reply
        new_prompt = before[len(ids) :]
        labels += (new_prompt if train_on_prompt else [IGNORE] * len(new_prompt)) + reply
        prompt = before
        ids = before + reply
    if not prompt:
        raise ConfigError("a chat row has no assistant turn to learn; every row needs one (role 'assistant')")
    return ids, labels, prompt


def fitting_rows(tokenizer: Any, rows: LMRows, max_length: int, long_prompts: str, split: str) -> tuple[LMRows, int]:
    """The chat rows whose prompt leaves room for a response (`long_prompts=skip`), and how many were
    left out; with `long_prompts=error` the first row that does not fit is an error naming it."""
    if "messages" not in rows.ds.column_names:
        return rows, 0
    keep = []
    for r, messages in enumerate(rows.ds["messages"]):
        n = len(chat_row(tokenizer, messages, False)[2])
        if n < max_length:
            keep.append(r)
        elif long_prompts == "error":
            raise ConfigError(
                f"{split} row {r + 1}: its prompt has {n} tokens, no room for a response in max_length="
                f"{max_length}; raise max_length, shorten the prompt, or set long_prompts=skip"
            )
    if not keep:
        raise ConfigError(f"every {split} row's prompt is longer than max_length={max_length}; raise max_length")
    return (rows if len(keep) == len(rows) else rows.subset(keep)), len(rows) - len(keep)


def encode_rows(tokenizer: Any, rows: LMRows, max_length: int, train_on_prompt: bool, long_prompts: str) -> LMEncoded:
    """Every row of a split as token ids and labels, one per row (rows that cannot fit were left out
    at load, `fitting_rows`; see the module docstring for truncation)."""
    pad = tokenizer.pad_token_id
    if "input_ids" in rows.ds.column_names:  # packed text blocks: every token counts
        blocks = [list(b) for b in rows.ds["input_ids"]]
        return LMEncoded(blocks, [list(b) for b in blocks], pad)
    out = LMEncoded([], [], pad, [], [], {"truncated": 0})
    for r, messages in enumerate(rows.ds["messages"]):
        ids, labels, prompt = chat_row(tokenizer, messages, train_on_prompt)
        if len(prompt) >= max_length:
            raise ConfigError(
                f"row {r + 1}: its prompt has {len(prompt)} tokens, no room for a response in max_length="
                f"{max_length}; raise max_length, shorten the prompt, or set long_prompts=skip"
            )
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            out.counts["truncated"] += 1
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.prompts.append(prompt)  # type: ignore[union-attr]
        out.answers.append(str(messages[-1]["content"]) if messages[-1]["role"] == "assistant" else "")  # type: ignore[union-attr]
    return out


def collate(enc: LMEncoded, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels [B, L] (labels -100 on padding)."""
    width = max(len(enc.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), enc.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(rows):
        n = len(enc.input_ids[i])
        ids[j, :n], labels[j, :n], mask[j, :n] = torch.tensor(enc.input_ids[i]), torch.tensor(enc.labels[i]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_prompts(enc: LMEncoded, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Left-padded prompts (generation continues every row at the same position)."""
    assert enc.prompts is not None
    width = max(len(enc.prompts[i]) for i in rows)
    ids = torch.full((len(rows), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(rows):
        n = len(enc.prompts[i])
        ids[j, width - n :], mask[j, width - n :] = torch.tensor(enc.prompts[i]), 1
    return {"input_ids": ids, "attention_mask": mask}


def train_batches(
    enc: LMEncoded, batch_size: int, seed: int, group_by_length: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch in a seeded random order (`fl.tasks.order`)."""
    for rows in epoch_batches([len(x) for x in enc.input_ids], batch_size, seed, group_by_length):
        yield collate(enc, rows)


def by_length(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Row positions sorted by length (less padding), in batches."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
