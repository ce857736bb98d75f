"""Scoring a multiple-choice item by log-likelihood, as lm-evaluation-harness scores its
`multiple_choice` tasks (MMLU, ARC, HellaSwag, PIQA, OpenBookQA): the summed log-probability of
each choice's tokens given the context; `acc` takes the argmax, `acc_norm` the argmax of the
log-probability divided by the choice's length in characters.

The split into tokens is the harness's (`LM._encode_pair`, lm_eval/api/model.py, read at commit
4e7e0d47): whitespace at the end of the context moves to the start of the continuation; the context
is its own encoding and the continuation the tokens of the whole string's encoding past that many
(so a token that merges across the boundary counts as the continuation's); encodings keep the
tokenizer's own special tokens, as `HFLM.tok_encode` does when `add_bos_token` is unset (older
harness versions encode without them; SmolLM2's tokenizer adds none either way).

The context runs through the model once; each choice continues from its key/value cache (repeated
for the choices, which run as one batch), so an item costs one context pass plus one batched pass
over its choices (none when every choice is one token, as MMLU's letters), and scores what a full
pass over context + choice scores (tests/tasks/test_choices.py checks both against each other).
Items batch by length (`items_logprobs`): several contexts in one left-padded pass, longest context
first (the harness sorts its requests by context + continuation), then all their choices in one pass
from the cache. A context longer than the model's positions is cut from the left, as the harness
cuts it (`fit` says where the cut differs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fl.data.benchmarks import Choice
from fl.errors import ConfigError

BATCH_TOKENS = 512  # a pass's context + choice tokens; longer batches ran slower per item on CPUs (bench reports)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-evaluation-harness splits them."""
    tail = len(context) - len(context.rstrip())
    if tail:
        context, continuation = context[:-tail], context[-tail:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]  # the tokenizer's own special tokens, as the harness
    ctx = tokenizer(context)["input_ids"]
    return ctx, whole[len(ctx) :]  # the harness's split by count: a merged token stays the continuation's


@torch.inference_mode()
def choice_logprobs(model: nn.Module, tokenizer, item: Choice, device: torch.device) -> list[float]:
    """Each choice's summed token log-probability given the context (`items_logprobs` of one item)."""
    return items_logprobs(model, tokenizer, [item], device)[0]


@torch.inference_mode()
def items_logprobs(
    model: nn.Module,
    tokenizer,
    items: Sequence[Choice],
    device: torch.device,
    batch_size: int = 1,
    batch_tokens: int = BATCH_TOKENS,
) -> list[list[float]]:
    """Each item's choices' summed token log-probabilities. Items run longest context first (so a
    batch pads little), up to `batch_size` a pass and `batch_tokens` tokens of context and choices
    (a long context runs alone): their contexts in one left-padded pass, then every choice of more
    than one token of the batch in one pass from that cache (each row's cache repeated for its
    choices). Results come back in the items' order."""
    limit = context_size(model)
    pairs = [fit([encode_pair(tokenizer, it.context, it.delimiter + c) for c in it.choices], limit) for it in items]
    order = sorted(range(len(items)), key=lambda i: -len(pairs[i][0][0]))
    out: list[list[float]] = [[] for _ in items]
    chunk: list[int] = []
    for n, i in enumerate(order):
        chunk.append(i)
        tokens = sum(len(pairs[k][0][0]) + sum(len(c) for _, c in pairs[k]) for k in chunk)
        nxt = order[n + 1] if n + 1 < len(order) else None
        grow = nxt is not None and len(chunk) < max(batch_size, 1)
        if grow and tokens + len(pairs[nxt][0][0]) + sum(len(c) for _, c in pairs[nxt]) <= batch_tokens:
            continue
        for k, scores in zip(chunk, _batch_logprobs(model, [pairs[k] for k in chunk], device), strict=True):
            out[k] = scores
        chunk = []
    return out


def context_size(model: nn.Module) -> int | None:
    """The most positions the model takes, where its config says (the harness's `max_length` order)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def fit(pairs: list[tuple[list[int], list[int]]], limit: int | None) -> list[tuple[list[int], list[int]]]:
    """An item's (context, continuation) pairs within the model's positions: the context cut from the
    left so that it and the longest continuation (less its last token) fit, as the harness cuts each
    request (it cuts per choice; here one cut for all, the longest choice's, so the cache is shared)."""
    longest = max((len(cont) for _, cont in pairs), default=0)
    if limit is None or len(pairs[0][0]) + longest - 1 <= limit:
        return pairs
    keep = limit - max(longest - 1, 0)
    if keep < 1:
        raise ConfigError(f"a choice of {longest} tokens does not fit the model's {limit} positions")
    return [(ctx[-keep:], cont) for ctx, cont in pairs]


def _batch_logprobs(model: nn.Module, batch: list[list[tuple[list[int], list[int]]]], device: torch.device):
    """One batch of items (each a list of (context, continuation) token pairs, one per choice)."""
    ctxs = [item[0][0] for item in batch]  # an item's context encodes the same for every choice
    width = max(len(c) for c in ctxs)
    ids = torch.zeros(len(ctxs), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for b, ctx in enumerate(ctxs):  # left padding: every context ends at the last column
        ids[b, width - len(ctx) :] = torch.tensor(ctx, device=device)
        mask[b, width - len(ctx) :] = 1
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, position_ids=position, use_cache=True, **last_logits_only(model))
    first = F.log_softmax(out.logits[:, -1].float(), -1)  # [B, V]: predicts each choice's first token
    scores = [[float(first[b, cont[0]]) if cont else 0.0 for _, cont in item] for b, item in enumerate(batch)]
    rows = [(b, k, cont) for b, item in enumerate(batch) for k, (_, cont) in enumerate(item) if len(cont) > 1]
    if not rows:  # single-token choices (MMLU's letters): the context pass is all
        return scores
    # the choices that go on, [R, L] right-padded after their row's cache: positions go on from the context's
    length = max(len(cont) - 1 for _, _, cont in rows)
    ids2 = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    owner = torch.tensor([b for b, _, _ in rows], device=device)
    mask2 = torch.cat([mask[owner], torch.zeros_like(ids2)], 1)
    position2 = torch.zeros_like(ids2)
    for r, (b, _, cont) in enumerate(rows):
        ids2[r, : len(cont) - 1] = torch.tensor(cont[:-1], device=device)
        mask2[r, width : width + len(cont) - 1] = 1
        position2[r] = len(ctxs[b]) + torch.arange(length, device=device)
    cache = _cache_of(out)
    cache.reorder_cache(owner)  # row r continues from its item's context
    logits = model(ids2, attention_mask=mask2, position_ids=position2, use_cache=True, **{_cache_arg(model): cache})
    logits = logits.logits.float()  # [R, L, V]
    targets = torch.zeros_like(ids2)
    for r, (_, _, cont) in enumerate(rows):
        targets[r, : len(cont) - 1] = torch.tensor(cont[1:], device=device)
    # each target's log-probability without a [R, L, V] log-softmax: its logit less the row's logsumexp
    logp = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)  # [R, L]
    for r, (b, k, cont) in enumerate(rows):
        scores[b][k] += float(logp[r, : len(cont) - 1].sum())
    return scores


def _forward_params(model: nn.Module) -> set[str]:
    """The keyword names the model's own forward takes: a peft model's forward passes `**kwargs`
    through to its base model's, so the base's names are the ones that count."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(inner.forward).parameters)


def last_logits_only(model: nn.Module) -> dict[str, int]:
    """The forward's option to compute logits for the last position only (a 5-shot MMLU context's
    full logits are ~140 MB in fp32), where the model has one."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}


def _cache_of(out) -> object:
    """The key/value cache a forward returned (`cache` since transformers 5.x, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_arg(model: nn.Module) -> str:
    """The forward's name for the cache it continues from (a name the forward does not know would
    vanish into `**kwargs`, and the choices would be scored without their context)."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


@torch.inference_mode()
def direct_logprob(
    model: nn.Module, context: Sequence[int], continuation: Sequence[int], device: torch.device
) -> float:
    """The continuation's summed token log-probability from one full pass over context + continuation."""
    ids = torch.tensor([[*context, *continuation]], device=device)
    logp = F.log_softmax(model(ids).logits[0].float(), -1)
    start = len(context)
    targets = ids[0, start:]
    return float(logp[start - 1 : start - 1 + len(continuation)].gather(1, targets[:, None]).sum())


def pick(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(acc's choice, acc_norm's choice): the argmax of the log-probabilities, and of the
    log-probabilities per character of each choice, the delimiter left out (the harness's
    `acc_norm`); ties go to the first."""
    norm = [lp / max(len(c), 1) for lp, c in zip(logprobs, choices, strict=True)]
    return max(range(len(logprobs)), key=logprobs.__getitem__), max(range(len(norm)), key=norm.__getitem__)
