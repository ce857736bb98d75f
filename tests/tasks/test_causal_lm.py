"""The causal-LM task room on tiny random GPT-2 / Llama models: which tokens the loss counts, the
chat template, packing, perplexity, generation scoring, and top-k KD against the dense KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fl import models
from fl.config import Config
from fl.data.lm_rows import LMRows, pack
from fl.errors import ConfigError
from fl.tasks import build_task
from fl.tasks.kd_losses import kl_divergence, topk_kl
from fl.tasks.lm_encode import IGNORE, chat_row, encode_rows
from tests.conftest import lm_tokenizer

CPU = torch.device("cpu")
ROW = [{"role": "user", "content": "review : good movie ?"}, {"role": "assistant", "content": "positive"}]


def task_of(model_dir, sft, **kw):
    train, test = sft
    cfg = Config(
        task_kind="causal_lm",
        model=str(model_dir),
        task="csv",
        train_file=str(train),
        test_file=str(test),
        max_length=32,
        **kw,
    )
    return build_task(cfg), cfg


def test_prompt_tokens_are_masked_and_the_response_ends_with_eos():
    for template in (True, False):
        tok = lm_tokenizer(template)
        ids, labels, prompt = chat_row(tok, ROW, train_on_prompt=False)
        n = len(prompt)
        assert ids[:n] == prompt and labels[:n] == [IGNORE] * n
        assert labels[n:] == ids[n:] == tok("positive", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        every, _, _ = chat_row(tok, ROW, train_on_prompt=True)[1], None, None
        assert IGNORE not in every


def test_the_chat_template_builds_the_prompt_and_the_plain_template_otherwise():
    tok = lm_tokenizer(True)
    _, _, prompt = chat_row(tok, ROW, False)
    expected = tok.apply_chat_template(ROW[:1], add_generation_prompt=True, tokenize=True)
    assert prompt == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert tok.decode(prompt).startswith("<user>")
    plain = lm_tokenizer(False)
    _, _, prompt = chat_row(plain, ROW, False)
    words = "### Instruction : review : good movie ? ### Response :".split()
    assert plain.decode(prompt, skip_special_tokens=True).split() == words


def test_packing_cuts_exact_blocks_of_the_token_stream():
    tok = lm_tokenizer(False)
    text = " ".join(["the movie was good and the plot was dull"] * 7)
    stream = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    blocks = pack(tok, {"doc": text}, 8)["doc"]
    assert len(blocks) == len(stream) // 8 and all(len(b) == 8 for b in blocks)
    assert sum(blocks, []) == stream[: 8 * len(blocks)]
    from datasets import Dataset

    enc = encode_rows(tok, LMRows(Dataset.from_dict({"input_ids": blocks})), 8, False, "error")
    assert enc.labels == enc.input_ids  # packed text: every token counts


def test_perplexity_is_exp_of_the_mean_token_loss(tiny_llama_dir, tiny_sft):
    task, _ = task_of(tiny_llama_dir, tiny_sft, max_new_tokens=3)
    model, tok, _ = task.build_model(models.ModelSpec(str(tiny_llama_dir), None, False, 0, None))
    enc = task.encode(tok, task.test)
    m = task.metrics(task.eval_sums(model, enc, 7, CPU))
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    total, count = 0.0, 0
    for i in range(len(enc)):  # the mean over every scored token, row by row with HF's own shift
        ids = torch.tensor([enc.input_ids[i]])
        labels = torch.tensor([enc.labels[i]])
        out = model(input_ids=ids, labels=labels)
        k = int((labels[0, 1:] != IGNORE).sum())
        total, count = total + out.loss.item() * k, count + k
    assert m["loss"] == pytest.approx(total / count, rel=1e-5)
    assert 0.0 <= m["accuracy"] <= 1.0 and "exact_match" in m


def test_a_task_without_rows_scores_and_exports_like_the_task(tiny_llama_dir, tiny_sft):
    """A model-free rank 0's copy (fl.setup.share_server_model): no rows, no tokenizer; the metrics and
    the model it builds to export are the task's own."""
    import pickle

    task, _ = task_of(tiny_llama_dir, tiny_sft, max_new_tokens=3)
    light = pickle.loads(pickle.dumps(task.without_rows()))
    assert light.tokenizer is None and (len(light.train), len(light.test)) == (len(task.train), len(task.test))
    assert (light.metric, light.columns, light.notes) == (task.metric, task.columns, task.notes)
    spec = models.ModelSpec(str(tiny_llama_dir), None, False, 0, None)
    model, tok, _ = task.build_model(spec)
    sums = task.eval_sums(model, task.encode(tok, task.test), 7, CPU)
    assert light.metrics(sums) == task.metrics(sums)
    again, again_tok, _ = light.build_model(spec)  # the tokenizer from the model's folder
    assert again.config.pad_token_id == model.config.pad_token_id and again_tok.pad_token_id == tok.pad_token_id
    with pytest.raises(RuntimeError, match="holds no rows"):
        light.test.subset([0])
    with pytest.raises(RuntimeError, match="holds no rows"):
        light.partition_groups(range(2))


def test_topk_kd_is_the_dense_kd_at_full_vocabulary_and_shrinks_the_bytes():
    g = torch.Generator().manual_seed(0)
    s, t, temp = torch.randn(12, 40, generator=g), torch.randn(12, 40, generator=g), 2.0
    top = F.softmax(t / temp, dim=-1).topk(40, dim=-1)
    dense = kl_divergence(s, t, temp)
    torch.testing.assert_close(topk_kl(s, top.values, top.indices, temp), dense, rtol=1e-5, atol=1e-6)
    small = F.softmax(t / temp, dim=-1).topk(5, dim=-1)
    cut = topk_kl(s, small.values, small.indices, temp)
    assert 0 < cut < kl_divergence(s, t, temp)  # the tail bucket: a lower bound of the dense KL
    assert topk_kl(t, small.values, small.indices, temp).abs() < 1e-5  # the teacher against itself


def test_kd_targets_are_top_k_per_scored_token(tiny_llama_dir, tiny_sft):
    task, _ = task_of(tiny_llama_dir, tiny_sft, kd_top_k=4)
    model, tok, _ = task.build_model(models.ModelSpec(str(tiny_llama_dir), None, False, 0, None))
    enc = task.encode(tok, task.train).subset(range(6))
    targets = task.kd_targets(model, enc, 4, CPU)
    n = sum(task.scored(enc))
    assert n == 12 and targets["probs"].shape == targets["indices"].shape == (n, 4)  # answer + EOS per row
    assert task.kd_like(enc, CPU)["probs"].shape == (n, 4)
    vocab = model.config.vocab_size  # what travels per token: k probabilities (+ k ids down), not the vocabulary
    assert task.kd_reply_like(enc, CPU).numel() * vocab // 4 == n * vocab
    assert sum(v.numel() for v in targets.values()) == 2 * n * 4
    reply = task.kd_reply(model, enc, targets, 4, CPU)
    torch.testing.assert_close(reply, targets["probs"])  # the teacher itself replies with its own top-k
    kl, out = task.kd_kl(model, enc, [1, 3], targets, task.temperature, CPU)
    assert out["logits"].shape == (4, vocab) and kl.abs() < 1e-5


def test_bad_causal_inputs_are_one_line(tiny_model_dir, tiny_llama_dir, tiny_sft, tmp_path):
    with pytest.raises(ConfigError, match="not a causal language model"):
        task, _ = task_of(tiny_model_dir, tiny_sft)
        task.build_model(models.ModelSpec(str(tiny_model_dir), None, False, 0, None))
    (tmp_path / "bad.jsonl").write_text('{"question": "x", "answer": "y"}\n')
    with pytest.raises(ConfigError, match="no column 'instruction'"):
        task_of(tiny_llama_dir, (tmp_path / "bad.jsonl", tiny_sft[1]))
    with pytest.raises(ConfigError, match="no room for a response in max_length=8"):
        task, cfg = task_of(tiny_llama_dir, tiny_sft)
        task.max_length = 8
        task.encode(task.tokenizer, task.train)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        from fl.tasks.causal_lm import quantized

        if torch.cuda.is_available():
            pytest.skip("refusal is the CPU's")
        quantized(True)
    with pytest.raises(ConfigError, match="causal_lm takes task=rotten_tomatoes"):
        Config(task_kind="causal_lm", task="sst2")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama_dir, tiny_sft):
    grads = []
    for flag in (False, True):
        task, _ = task_of(tiny_llama_dir, tiny_sft, gradient_checkpointing=flag)
        model, tok, _ = task.build_model(models.ModelSpec(str(tiny_llama_dir), None, False, 0, None))
        model.train()
        batch = next(task.train_batches(task.encode(tok, task.train), 4, seed=0))
        loss, _ = task.loss(model, batch)
        loss.backward()
        grads.append((loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_model_dropout_reaches_the_attention_kernels_rate(tiny_llama_dir, tiny_sft):
    task, _ = task_of(tiny_llama_dir, tiny_sft, max_new_tokens=3)
    model, _, _ = task.build_model(models.ModelSpec(str(tiny_llama_dir), None, False, 0, None, dropout=0.25))
    rates = {m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")}
    assert rates == {0.25} and model.config.attention_dropout == 0.25
