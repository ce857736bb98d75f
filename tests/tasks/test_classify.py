"""The classification task room: metric sums that add up over shards to the whole test set's
metrics, the loss of a batch, the head, and the shapes distillation moves."""

from __future__ import annotations

import pytest
import torch

from fl import models
from fl.config import Config
from fl.tasks import build_task
from fl.tasks.classify import ClassifyTask, predict


@pytest.fixture(scope="module")
def task_and_model(tiny_model_dir, tiny_task):
    train, test = tiny_task
    task = build_task(Config(task="csv", train_file=str(train), test_file=str(test), max_length=16))
    model, tok, _ = task.build_model(models.ModelSpec(str(tiny_model_dir), None, False, 0, None))
    return task, model, tok


def test_metric_sums_over_shards_equal_the_whole(task_and_model):
    task, model, tok = task_and_model
    assert isinstance(task, ClassifyTask) and task.num_labels == 2 and task.metric == "accuracy"
    enc, cpu = task.encode(tok, task.test), torch.device("cpu")
    whole = task.eval_sums(model, enc, 7, cpu)
    parts = [task.eval_sums(model, enc.subset(range(k, len(enc), 3)), 5, cpu) for k in range(3)]
    total = task.eval_template(cpu)
    for p in parts:
        total.add_(p)
    a, b = task.metrics(whole), task.metrics(total)
    assert a["accuracy"] == b["accuracy"] and a["mcc"] == b["mcc"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    logits = predict(model, enc, 64, cpu)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(enc.labels)).item()
    assert a["loss"] == pytest.approx(expected, rel=1e-6)
    correct = int((logits.argmax(-1) == torch.tensor(enc.labels)).sum())
    assert a["accuracy"] == correct / len(enc)
    assert task.metrics(task.eval_sums(model, enc.subset([]), 8, cpu))["accuracy"] == 0.0  # no rows, no crash


def test_loss_head_and_distillation_shapes(task_and_model):
    task, model, tok = task_and_model
    enc, cpu = task.encode(tok, task.train), torch.device("cpu")
    batch = next(task.train_batches(enc, 4, seed=0))
    loss, n = task.loss(model, dict(batch))
    assert n == 4 and loss.ndim == 0 and loss.item() > 0
    assert task.is_head("classifier.weight") and not task.is_head("bert.encoder.layer.0.attention.self.query.weight")
    targets = task.kd_targets(model, enc.subset(range(6)), 4, cpu)
    assert targets["logits"].shape == (6, 2) == task.kd_like(enc.subset(range(6)), cpu)["logits"].shape
    out = task.kd_forward(model, enc, [0, 1, 2], cpu)
    assert out["logits"].shape == (3, 2) and out["labels"].tolist() == [enc.labels[i] for i in (0, 1, 2)]
    assert task.partition_labels([0, 1]) == task.train.labels[:2]


def test_lora_targets_are_peft_defaults_unless_named(tiny_model_dir, task_and_model):
    task = task_and_model[0]
    spec = models.ModelSpec.from_config(Config(model=str(tiny_model_dir)), lora=True)
    model, _, _ = task.build_model(spec)
    adapted = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}  # <module>.lora_A.default.weight
    assert adapted == {"query", "value"}  # peft's default for BERT
    spec = models.ModelSpec.from_config(Config(model=str(tiny_model_dir), lora_target_modules="key"), lora=True)
    model, _, _ = task.build_model(spec)
    assert {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n} == {"key"}


def test_model_dropout_sets_every_base_rate_and_leaves_lora_its_own(tiny_model_dir, task_and_model):
    task, _, tok = task_and_model
    lora = models.LoraSpec(r=2, alpha=4, dropout=0.3, targets=None, seed=0)
    model, _, _ = task.build_model(models.ModelSpec(str(tiny_model_dir), None, False, 0, lora, dropout=0.0))
    rates = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert {p for n, p in rates.items() if "lora_dropout" in n} == {0.3}
    assert {p for n, p in rates.items() if "lora_dropout" not in n} == {0.0}
    assert model.base_model.model.config.hidden_dropout_prob == 0.0
    assert model.base_model.model.config.attention_probs_dropout_prob == 0.0
    plain, _, _ = task.build_model(models.ModelSpec(str(tiny_model_dir), None, False, 0, None, dropout=0.0))
    plain.train()  # no dropout anywhere: two forward passes in training mode agree
    batch = tok(["good movie", "bad plot here"], return_tensors="pt", padding=True)
    torch.testing.assert_close(plain(**batch).logits, plain(**batch).logits, rtol=0, atol=0)


def test_a_task_without_rows_keeps_what_the_server_uses(task_and_model, tiny_model_dir):
    """What a model-free rank 0 holds (fl.setup.share_server_model): sizes, labels, metrics, the
    model it exports; a small pickle with no `datasets` object in it."""
    import pickle

    task, model, tok = task_and_model
    light = pickle.loads(pickle.dumps(task.without_rows()))
    assert (len(light.train), len(light.test), light.num_labels, light.metric, light.columns) == (
        len(task.train),
        len(task.test),
        task.num_labels,
        task.metric,
        task.columns,
    )
    rows = range(len(task.train))
    assert light.partition_labels(rows) == task.partition_labels(rows)
    sums = task.eval_sums(model, task.encode(tok, task.test), 8, torch.device("cpu"))
    assert light.metrics(sums) == task.metrics(sums)
    assert light.eval_template(torch.device("cpu")).parts["eval"]["confusion"].shape == (2, 2)
    assert b"datasets" not in pickle.dumps(light)
    with pytest.raises(RuntimeError, match="holds no rows"):
        light.train.subset([0])
    again, _, _ = light.build_model(models.ModelSpec(str(tiny_model_dir), None, False, 0, None))
    assert again.num_labels == task.num_labels
