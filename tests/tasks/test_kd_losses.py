"""Distillation: the loss against a direct formula, layer selection for students, attention maps."""

import pytest
import torch
import torch.nn.functional as F

from fl.errors import ConfigError
from fl.models import evenly_spaced, keep_layers
from fl.tasks.classify import load_classifier
from fl.tasks.kd_losses import attention_loss, kd_loss, kl_divergence, layer_map


def test_kd_loss_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    y = torch.randint(0, 3, (8,), generator=gen)
    T, alpha = 3.0, 0.7
    # KL(p_t || p_s) per example = sum_k p_t * (log p_t - log p_s); batch mean; times T^2
    p_t = F.softmax(t / T, dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(dim=-1).mean()
    expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, alpha=alpha, temperature=T), expected)
    direct = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T**2
    torch.testing.assert_close(kl_divergence(s, t, T), direct)


def test_kd_loss_zero_when_student_equals_teacher():
    t = torch.randn(4, 2)
    assert kl_divergence(t.clone(), t, 2.0).abs().item() < 1e-6
    assert kd_loss(t.clone(), t, None, alpha=1.0, temperature=4.0).abs().item() < 1e-6
    assert kd_loss(t + 1.0, t, None, alpha=1.0, temperature=4.0).abs().item() < 1e-6  # softmax shift-invariant
    assert kd_loss(-t, t, None, alpha=1.0, temperature=1.0).item() > 0.0


def test_layer_map_and_attention_loss():
    assert layer_map(6, 12) == [(k, 2 * k) for k in range(6)]  # the original mapping
    assert layer_map(3, 6) == [(0, 0), (1, 2), (2, 4)]
    maps = [torch.softmax(torch.randn(2, 4, 5, 5), -1) for _ in range(4)]
    assert attention_loss([maps[0], maps[2]], maps).item() == 0.0
    assert attention_loss([maps[1], maps[3]], maps).item() > 0.0
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert attention_loss([maps[0], maps[2]], maps, mask).item() == 0.0


def test_keep_layers_keeps_the_right_layers(tiny_model_dir):
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10] and evenly_spaced(6, 3) == [0, 2, 4]
    full = load_classifier(str(tiny_model_dir), 2, seed=0)
    cut = keep_layers(load_classifier(str(tiny_model_dir), 2, seed=0), 1)
    assert cut.config.num_hidden_layers == 1 and len(cut.bert.encoder.layer) == 1
    for a, b in zip(cut.bert.encoder.layer[0].parameters(), full.bert.encoder.layer[0].parameters(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(cut.bert.embeddings.word_embeddings.weight, full.bert.embeddings.word_embeddings.weight)
    out = cut(input_ids=torch.tensor([[2, 5, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert out.logits.shape == (1, 2)
    with pytest.raises(ConfigError, match="student_layers=3 must be between 1 and the teacher's 2 layers"):
        keep_layers(full, 3)


def test_a_cut_decoder_continues_from_its_cache():
    """Layers 0 and 2 of 4 kept: each takes its new index, so a key/value cache of 2 layers (the
    benchmarks' context reuse, generation) works and scores what a full pass scores."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fl.data.benchmarks import Choice
    from fl.tasks.choices import choice_logprobs, direct_logprob

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2}
    model = keep_layers(LlamaForCausalLM(LlamaConfig(vocab_size=40, num_key_value_heads=1, **sizes)).eval(), 2)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]

    class Ids:  # a tokenizer of space-separated ids
        def __call__(self, text):
            return {"input_ids": [int(t) for t in text.split()]}

    item = Choice("5 6 7", ("8 9", "10 11 12"), gold=0)
    for lp, cont in zip(choice_logprobs(model, Ids(), item, torch.device("cpu")), ([8, 9], [10, 11, 12]), strict=True):
        assert lp == pytest.approx(direct_logprob(model, [5, 6, 7], cont, torch.device("cpu")), abs=1e-5)
