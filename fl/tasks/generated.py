"""Scoring by what a model writes (`fl.data.benchmarks.Generated` items): greedy generation in
left-padded batches, each reply cut at its stop strings and read by its item's rule.

Generation as lm-evaluation-harness's `HFLM.generate_until` (lm_eval/models/huggingface.py, read at
commit 4e7e0d47): prompts encoded with the tokenizer's own special tokens, sorted longest first and
batched, left-padded; `model.generate` with do_sample=False (the model's other generation settings
as they are, as there); a row stops once its decoded continuation holds a stop string (the item's
plus the tokenizer's EOS text, the harness's `handle_stop_sequences`) or at the token budget (the
harness's `max_gen_toks`, 256); the continuation decoded without special tokens and cut before the
first stop string. FlowerTune (flwrlabs/flower, benchmarks/flowertune-llm/evaluation/general-nlp/
benchmarks.py, `inference`) generates as many tokens as the gold letter has
(`len(tokenizer(gold, add_special_tokens=False))`, one for the usual tokenizers) with no stop
strings and decodes without special tokens; it runs one prompt at a time, fl batches them
(tests/tasks/test_generated.py checks batched against one at a time).

The rules: "gsm8k" counts the harness's strict-match and flexible-extract answers that match the
reference exactly (`fl.tasks.answers`); "flowertune" counts FlowerTune's first-letter read that
equals the gold letter (`acc`) and the replies that give no letter (`invalid`). An item with
`choices` also gets `acc_loglik`: the choice of highest log-probability right after the prompt's
own tokens (the tokens generation starts from). FlowerTune's prompt ends in a newline, so the
letter begins a line: "A".."D" without a leading space, the token a greedy reply would start with;
no formatting failure (a reply that opens with "The answer") distorts it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import groupby

import torch
from torch import nn
from torch.nn import functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

from fl.data.benchmarks import Generated
from fl.errors import ConfigError
from fl.tasks.answers import flowertune_choice, gsm8k_correct, gsm8k_flexible, gsm8k_strict
from fl.tasks.choices import context_size, direct_logprob, last_logits_only

MAX_NEW_TOKENS = 256  # the harness's max_gen_toks
BATCH_SIZE = 8
LETTERS = ("a", "b", "c", "d", "e")  # the replies FlowerTune reads as a choice


class StopStrings(StoppingCriteria):
    """Ends each row of a batch once its continuation (from token `start` on, decoded with special
    tokens, so "</s>" shows) holds one of `stop`."""

    def __init__(self, tokenizer, stop: Sequence[str], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, tuple(s for s in stop if s), start

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :])
        done = [any(s in text for s in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut(text: str, stop: Sequence[str]) -> str:
    """The text before its first stop string (the harness's `postprocess_generated_text`)."""
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text


def stops(item: Generated, tokenizer) -> tuple[str, ...]:
    """The item's stop strings and the tokenizer's EOS text, as the harness adds it; none if the item has none."""
    eos = tokenizer.eos_token
    return item.stop + ((eos,) if item.stop and eos and eos not in item.stop else ())


def budget(item: Generated, tokenizer, max_new_tokens: int) -> int:
    """New tokens for the item: FlowerTune's, as many as the gold letter has; else `max_new_tokens`."""
    if item.rule == "flowertune":
        return len(tokenizer(item.reference, add_special_tokens=False)["input_ids"])
    return max_new_tokens


@torch.inference_mode()
def generate(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str], device: torch.device
) -> list[str]:
    """Greedy continuations of `prompts`, run as one left-padded batch, each cut before its first stop string."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    limit = context_size(model)
    if limit and width + max_new_tokens > limit:
        raise ConfigError(
            f"a prompt of {width} tokens and {max_new_tokens} new ones pass the model's {limit} positions; "
            "give fewer shots or a smaller max_new_tokens"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :] = torch.tensor(e)
        mask[i, width - len(e) :] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        stopping_criteria=StoppingCriteriaList([StopStrings(tokenizer, stop, width)]) if stop else None,
    )
    return [cut(tokenizer.decode(row[width:], skip_special_tokens=True), stop) for row in out.tolist()]


def replies(
    model: nn.Module,
    tokenizer,
    items: Sequence[Generated],
    device: torch.device,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = BATCH_SIZE,
) -> list[str]:
    """Each item's reply, in the items' order: batches share a budget and stop strings, and hold
    prompts of alike length (longest first, as the harness), so that little of a batch is padding."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: give 1 or more")
    lengths = [len(tokenizer(it.prompt)["input_ids"]) for it in items]
    keys = [(budget(it, tokenizer, max_new_tokens), stops(it, tokenizer)) for it in items]
    order = sorted(range(len(items)), key=lambda i: (keys[i], -lengths[i]))
    out = [""] * len(items)
    for (new_tokens, stop), same in groupby(order, key=keys.__getitem__):
        rows = list(same)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            texts = generate(model, tokenizer, [items[i].prompt for i in chunk], new_tokens, stop, device)
            for i, text in zip(chunk, texts, strict=True):
                out[i] = text
    return out


@torch.inference_mode()
def letter_logprobs(
    model: nn.Module, tokenizer, prompt: str, letters: Sequence[str], device: torch.device
) -> list[float]:
    """Each choice's summed token log-probability right after the prompt's own tokens: one pass over
    the prompt (a choice of several tokens gets its own full pass)."""
    ctx = tokenizer(prompt)["input_ids"]
    conts = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in letters]
    logits = model(torch.tensor([ctx], device=device), **last_logits_only(model)).logits
    first = F.log_softmax(logits[0, -1].float(), -1)
    return [float(first[c[0]]) if len(c) == 1 else direct_logprob(model, ctx, c, device) for c in conts]


def generated_hits(
    model: nn.Module,
    tokenizer,
    items: Sequence[Generated],
    device: torch.device,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = BATCH_SIZE,
) -> dict[str, int]:
    """Counts over `items`: "n"; gsm8k's "exact_match_strict" and "exact_match_flexible";
    FlowerTune's "acc" and "invalid"; "acc_loglik" for items with choices; and for items of a group,
    "n:GROUP" and "acc:GROUP" (FlowerTune's categories)."""
    unknown = {it.rule for it in items} - {"gsm8k", "flowertune"}
    if unknown:
        raise ConfigError(f"unknown generation rule {sorted(unknown)[0]!r}; use gsm8k or flowertune")
    hits = Counter(n=len(items))
    for item, reply in zip(items, replies(model, tokenizer, items, device, max_new_tokens, batch_size), strict=True):
        if item.rule == "gsm8k":
            hits["exact_match_strict"] += gsm8k_correct(gsm8k_strict(reply), item.reference)
            hits["exact_match_flexible"] += gsm8k_correct(gsm8k_flexible(reply), item.reference)
        else:
            prediction = flowertune_choice(reply)
            right = prediction == item.reference.lower()
            hits["acc"] += right
            hits["invalid"] += prediction not in LETTERS
            if item.group:
                hits[f"n:{item.group}"] += 1
                hits[f"acc:{item.group}"] += right
        if item.choices:
            logprobs = letter_logprobs(model, tokenizer, item.prompt, item.choices, device)
            best = max(range(len(logprobs)), key=logprobs.__getitem__)  # ties: the first, as `pick`
            hits["acc_loglik"] += item.choices[best] == item.reference
    return dict(hits)
