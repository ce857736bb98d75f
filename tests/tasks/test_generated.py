"""Scoring by generation (`fl.tasks.generated`): batched, left-padded greedy generation gives the
replies that a plain `model.generate` gives one prompt at a time, the counts are the rules' counts of
those replies, and `acc_loglik` is the argmax of a full pass's log-probabilities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fl.data.benchmarks import Generated
from fl.errors import ConfigError
from fl.tasks.answers import flowertune_choice, gsm8k_correct, gsm8k_flexible, gsm8k_strict
from fl.tasks.choices import direct_logprob
from fl.tasks.generated import cut, generated_hits, letter_logprobs, replies
from tests.conftest import LM_SPECIAL, LM_WORDS

CPU = torch.device("cpu")
# the tiny vocabulary with digits, "####" and capital letters, so that replies hold answers to read
WORDS = LM_WORDS + [str(d) for d in range(10)] + ["####", "Question", "Answer", "A", "B", "C", "D"]


def letters_lm(out: Path | None = None):
    """(model, tokenizer): a random 2-layer Llama over WORDS (a word-level tokenizer, <s> first, </s>
    as EOS, <pad> to pad, 512 positions), saved to `out` if given."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(LM_SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens(LM_SPECIAL)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(1)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    ids = {"vocab_size": len(vocab), "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=1, max_position_embeddings=512, **sizes, **ids)).eval()
    if out is not None:
        model.save_pretrained(out)
        fast.save_pretrained(out)
    return model, fast


@pytest.fixture(scope="module")
def lm():
    return letters_lm()


def prompts() -> list[str]:
    """Prompts of unlike lengths (3 to 20 words), so that batches hold left padding."""
    return [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(3 + (5 * i) % 18)) for i in range(9)]


@torch.inference_mode()
def plain(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """One prompt through a plain greedy `model.generate`, decoded without special tokens."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_batched_generation_gives_the_replies_of_one_prompt_at_a_time(lm):
    model, tok = lm
    whole = [plain(model, tok, p, 12) for p in prompts()]
    stop = "fun"  # a word this model writes part-way in some replies, so that the stop string cuts
    expected = [cut(w, (stop, "</s>")) for w in whole]
    assert sum(e != w for e, w in zip(expected, whole, strict=True)) >= 2
    # every other reference is the last number its reply holds, so that flexible-extract counts hits
    refs = [
        f"#### {gsm8k_flexible(e)}" if i % 2 and any(map(str.isdigit, e)) else "#### 12345"
        for i, e in enumerate(expected)
    ]
    items = [Generated(p, r, "gsm8k", (stop,)) for p, r in zip(prompts(), refs, strict=True)]
    assert replies(model, tok, items, CPU, max_new_tokens=12, batch_size=4) == expected
    assert replies(model, tok, items, CPU, max_new_tokens=12, batch_size=1) == expected
    hits = generated_hits(model, tok, items, CPU, max_new_tokens=12, batch_size=4)
    strict = sum(gsm8k_correct(gsm8k_strict(e), r) for e, r in zip(expected, refs, strict=True))
    flexible = sum(gsm8k_correct(gsm8k_flexible(e), r) for e, r in zip(expected, refs, strict=True))
    assert hits == {"n": 9, "exact_match_strict": strict, "exact_match_flexible": flexible} and flexible >= 2


def test_flowertune_items_get_one_token_a_letter_read_and_the_loglik_argmax(lm):
    model, tok = lm
    groups = ("stem", "humanities", "stem", "social_sciences", "humanities", "stem", "stem", "humanities", "stem")
    letters = ("A", "B", "C", "D")
    items = [
        Generated(p, gold, "flowertune", (), letters, g)
        for p, gold, g in zip(prompts(), "BCADDBBCA", groups, strict=True)
    ]
    hits = generated_hits(model, tok, items, CPU, max_new_tokens=50, batch_size=4)
    reads = [flowertune_choice(plain(model, tok, it.prompt, 1)) for it in items]  # one token: as many as "A" has
    right = [r == it.reference.lower() for r, it in zip(reads, items, strict=True)]
    best = []
    for it in items:
        ctx = tok(it.prompt)["input_ids"]
        full = [direct_logprob(model, ctx, tok(c, add_special_tokens=False)["input_ids"], CPU) for c in it.choices]
        best.append(it.choices[max(range(4), key=full.__getitem__)] == it.reference)
    invalid = sum(r not in ("a", "b", "c", "d", "e") for r in reads)
    assert (hits["n"], hits["acc"], hits["invalid"], hits["acc_loglik"]) == (9, sum(right), invalid, sum(best))
    assert 0 < sum(right) < 9 - invalid and 0 < invalid < 9 and sum(best) > 0  # right, wrong and unread letters
    assert hits["n:stem"] == 5 and hits["acc:stem"] == sum(r for r, g in zip(right, groups, strict=True) if g == "stem")
    assert {k for k in hits if k.startswith("n:")} == {"n:stem", "n:humanities", "n:social_sciences"}


def test_letter_logprobs_are_a_full_pass_over_prompt_and_letter(lm):
    model, tok = lm
    prompt = "review : the movie was good ? Answer"
    choices = ("A", "B", "good", "very good")  # the last is two tokens: its own full pass
    got = letter_logprobs(model, tok, prompt, choices, CPU)
    ctx = tok(prompt)["input_ids"]
    want = [direct_logprob(model, ctx, tok(c, add_special_tokens=False)["input_ids"], CPU) for c in choices]
    assert got == pytest.approx(want, abs=1e-5) and len(set(got)) == 4


def test_cut_is_the_harness_postprocessing():
    assert cut("5 apples.\n\nQuestion: next", ("Question:", "</s>")) == "5 apples.\n\n"
    assert cut("a</s>b Question: c", ("Question:", "</s>")) == "a" and cut("abc", ()) == "abc"


def test_a_prompt_past_the_context_or_a_bad_rule_is_one_line(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    long = Generated(" ".join(["good"] * 60), "#### 1", "gsm8k", ("Question:",))
    with pytest.raises(
        ConfigError, match="pass the model's 64 positions; give fewer shots or a smaller max_new_tokens"
    ):
        replies(model, tok, [long], CPU, max_new_tokens=8)
    with pytest.raises(ConfigError, match="unknown generation rule 'bleu'"):
        generated_hits(model, tok, [Generated("good", "x", "bleu")], CPU)
