"""The local training loop: the task's loss, the terms' hooks in order, the head's own learning
rate, and the same steps for the same seed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fl.client.train import LocalSchedule, client_seed, param_groups, train_local
from fl.strategies.base import ClientTerm


class LineTask:
    """A regression 'task' over rows of (x, y): one batch per row, MSE of a linear model."""

    def train_batches(self, data, batch_size, seed):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        for i in range(0, len(order), batch_size):
            rows = [data[j] for j in order[i : i + batch_size]]
            yield {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}

    def loss(self, model, batch):
        return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), len(batch["y"])

    def is_head(self, name):
        return name.startswith("bias")


class Recorder(ClientTerm):
    def __init__(self, log, tag, scale=1.0):
        self.log, self.tag, self.scale = log, tag, scale

    def loss(self, model, loss):
        self.log.append(f"{self.tag}.loss")
        return loss * self.scale

    def after_backward(self, params):
        self.log.append(f"{self.tag}.backward")

    def after_step(self, params, lr):
        self.log.append(f"{self.tag}.step")


def rows(n=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return [(x[i], x[i].sum()) for i in range(n)]


def train_line(model: nn.Module, schedule: LocalSchedule, seed: int, terms: list) -> Any:
    """`train_local` on the line task's 8 rows, on the CPU."""
    return train_local(model, LineTask(), rows(), schedule, seed=seed, device=torch.device("cpu"), terms=terms)


def test_terms_run_in_order_at_their_place_in_each_step():
    log: list[str] = []
    res = train_line(nn.Linear(3, 1), LocalSchedule(0.1, 1, 4), 1, [Recorder(log, "a"), Recorder(log, "b")])
    assert res.steps == 2 and res.examples_seen == 8 and res.num_examples == 8
    step = ["a.loss", "b.loss", "a.backward", "b.backward", "a.step", "b.step"]
    assert log == step * 2
    assert res.lr_sum == 0.2  # constant schedule: two steps of 0.1


def test_same_seed_same_training_and_a_term_changes_the_loss():
    def fit(scale: float) -> tuple[float, torch.Tensor]:
        torch.manual_seed(5)
        model = nn.Linear(3, 1)
        res = train_line(model, LocalSchedule(0.05, 2, 2), 3, [Recorder([], "x", scale)])
        return res.loss_sum, model.weight.detach().clone()

    a, b, c = fit(1.0), fit(1.0), fit(2.0)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert c[0] == 2 * a[0] or not torch.equal(a[1], c[1])  # the scaled loss trains differently


def test_head_gets_its_own_learning_rate_and_seeds_differ_per_client():
    groups = param_groups(nn.Linear(3, 1), 0.1, 0.5, LineTask().is_head)
    assert [g["lr"] for g in groups] == [0.1, 0.5] and [len(g["params"]) for g in groups] == [1, 1]
    assert len(param_groups(nn.Linear(3, 1), 0.1, None, LineTask().is_head)) == 1
    assert client_seed(42, 1, 0) != client_seed(42, 1, 1) != client_seed(42, 2, 1)


def test_max_steps_caps_a_client_round():
    model = nn.Linear(3, 1)
    res = train_local(
        model, LineTask(), rows(8), LocalSchedule(0.1, 3, 2, max_steps=5), seed=1, device=torch.device("cpu")
    )
    assert res.steps == 5 and res.examples_seen == 10 and LocalSchedule(0.1, 3, 2).steps_for(8) == 12


def test_precision_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    from fl.models import precision as train

    cpu = torch.device("cpu")
    for value in ("fp32", "bf16", "fp16"):
        assert train.resolve_precision(value, cpu) == value
    for avx512_bf16, amx, expect in ((False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert train.resolve_precision("auto", cpu) == expect
        with train.autocast(cpu, "auto"):
            assert torch.is_autocast_enabled("cpu") == (expect == "bf16")


def test_the_heap_is_trimmed_every_few_steps_on_the_cpu(monkeypatch):
    import fl.client.memory

    trims: list[int] = []
    monkeypatch.setattr(fl.client.memory, "trim_heap", lambda: trims.append(1) or True)
    schedule = LocalSchedule(0.1, 1, 1, heap_trim_steps=4)
    res = train_local(nn.Linear(3, 1), LineTask(), rows(9), schedule, seed=1, device=torch.device("cpu"))
    assert res.steps == 9 and len(trims) == 2  # after steps 4 and 8
