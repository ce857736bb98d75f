"""Log-likelihood multiple choice (fl.tasks.choices) on a tiny random Llama: the context-reuse
score equals a full pass over context + choice, and acc / acc_norm pick as the harness defines."""

from __future__ import annotations

import pytest
import torch

from fl.data.benchmarks import Choice
from fl.tasks.choices import choice_logprobs, direct_logprob, encode_pair, items_logprobs, pick


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_reusing_the_context_scores_what_a_full_pass_scores(llama):
    model, tok = llama
    cpu = torch.device("cpu")
    item = Choice("review : the movie was", ("good", "really very bad", "fun . it is this"), gold=0)
    got = choice_logprobs(model, tok, item, cpu)
    for lp, choice in zip(got, item.choices, strict=True):
        ctx, cont = encode_pair(tok, item.context, item.delimiter + choice)
        assert len(cont) == len(choice.split())  # one word, one token: the split is the continuation's words
        assert lp == pytest.approx(direct_logprob(model, ctx, cont, cpu), abs=1e-5)
        by_hand = 0.0  # token by token, each from its own prefix
        for i, t in enumerate(cont):
            logits = model(torch.tensor([[*ctx, *cont[:i]]])).logits[0, -1]
            by_hand += float(torch.log_softmax(logits.float(), -1)[t])
        assert lp == pytest.approx(by_hand, abs=1e-4)


def test_trailing_context_whitespace_moves_to_the_continuation():
    class Chars:  # a character tokenizer: the split is visible
        def __call__(self, text):
            return {"input_ids": [ord(c) for c in text]}

    ctx, cont = encode_pair(Chars(), "Answer: ", "Paris")
    assert "".join(map(chr, ctx)) == "Answer:" and "".join(map(chr, cont)) == " Paris"


def test_a_token_that_merges_across_the_boundary_is_the_continuations():
    class Pairs:  # merges "ab" into one token: a context ending in "a" meets a choice starting with "b"
        def __call__(self, text):
            ids, i = [], 0
            while i < len(text):
                ids.append(1000 if text[i : i + 2] == "ab" else ord(text[i]))
                i += 2 if text[i : i + 2] == "ab" else 1
            return {"input_ids": ids}

    ctx, cont = encode_pair(Pairs(), "xa", "bc")  # whole: x, ab, c; the context's own: x, a
    assert ctx == [ord("x"), ord("a")] and cont == [ord("c")]  # the harness's split by count


def test_single_token_choices_need_only_the_context_pass(llama):
    model, tok = llama
    item = Choice("review : the movie was", ("good", "bad", "fun"), gold=0)
    full = [direct_logprob(model, *encode_pair(tok, item.context, " " + c), torch.device("cpu")) for c in item.choices]
    assert choice_logprobs(model, tok, item, torch.device("cpu")) == pytest.approx(full, abs=1e-5)


def test_acc_takes_the_argmax_and_acc_norm_divides_by_the_choices_characters():
    assert pick([-4.0, -6.0], ["ab", "abcdef"]) == (0, 1)  # -2 per character against -1
    assert pick([-3.0, -3.0], ["x", "y"]) == (0, 0)  # ties go to the first, as numpy's argmax


def test_a_peft_model_continues_from_its_cache(tiny_llama_dir):
    """A peft model (its forward takes `**kwargs`, the cache and `logits_to_keep` go by the base model's
    names) scores what a full pass scores."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cpu = torch.device("cpu")
    item = Choice("review : the movie was", ("really very bad", "fun . it is this"), gold=0)
    for lp, choice in zip(choice_logprobs(model, tok, item, cpu), item.choices, strict=True):
        ctx, cont = encode_pair(tok, item.context, item.delimiter + choice)
        assert lp == pytest.approx(direct_logprob(model, ctx, cont, cpu), abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_items_score_what_one_at_a_time_scores(arch, tiny_llama_dir, tiny_gpt2_dir):
    """Contexts of different lengths in one left-padded pass, choices of different lengths (one token,
    several, none) continuing from each row's cache: the same scores as each item alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    cpu = torch.device("cpu")
    items = [
        Choice("review : the movie was", ("good", "really very bad", "fun . it is this"), gold=0),
        Choice("review : it", ("bad", "good"), gold=1),
        Choice("review : a very long and really fun movie , it is this good and the", ("end", "movie was bad"), 0),
        Choice("the", ("movie", "good", "bad fun", ""), gold=2),  # "" encodes to no token here: scored 0
    ]
    alone = [choice_logprobs(model, tok, it, cpu) for it in items]
    for direct in alone[0]:
        assert direct != 0.0
    for size in (2, 4):
        got = items_logprobs(model, tok, items, cpu, batch_size=size)
        for a, b in zip(got, alone, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_a_context_longer_than_the_positions_is_cut_from_the_left(tiny_gpt2_dir):
    """GPT-2's 64 learned positions: a 90-word context keeps its last words, so that it and the longest
    choice (less its last token) fit, as the harness cuts its requests."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    item = Choice(" ".join(["good movie"] * 45), ("really very bad", "fun"), gold=0)
    got = choice_logprobs(model, tok, item, torch.device("cpu"))
    keep = 64 - 2  # the longest choice has 3 tokens
    for lp, choice in zip(got, item.choices, strict=True):
        ctx, cont = encode_pair(tok, item.context, " " + choice)
        assert len(ctx) > 64
        ids = torch.tensor([[*ctx[-keep:], *cont[:-1]]])  # the harness's input: (context + choice)[:-1], <= 64
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)[keep - 1 :]
        assert lp == pytest.approx(float(logp.gather(1, torch.tensor(cont)[:, None]).sum()), abs=1e-5)
