"""The round (`fl.server.Federation`) through its fast seam (tests/fakes.py): the real plan,
collect, server step, send down, evaluation, callbacks, checkpoints and results, driven by a fake
runner and task in this process, checked against arithmetic written out here. The same loop under
torchrun is tests/test_server.py's."""

from __future__ import annotations

import json

import pytest
import torch

from fl.config import Config
from fl.output.callbacks import Callback
from fl.output.checkpoint import find_resume_point, restore
from fl.strategies.strategy import sample_clients
from tests.fakes import fake_setup, run_round_loop


def config(tmp_path, **kw) -> Config:
    base = {"scheme": "fedavg", "num_clients": 4, "rounds": 3, "output_dir": str(tmp_path), "run_name": "fake",
            "save_model": False}  # fmt: skip
    return Config(**{**base, **kw})


def mean_step(r: int, clients: list[int]) -> float:
    """The example-weighted mean of the clients' `client_delta` in round r (n_c = 10 (c + 1))."""
    return sum((c + 1) ** 2 / 100 for c in clients) / sum(c + 1 for c in clients) * (-1) ** r


def test_the_round_is_the_example_weighted_mean_and_records_it(tmp_path):
    cfg = config(tmp_path)
    s = fake_setup(cfg)
    start = {k: v.detach().clone() for k, v in s.model.named_parameters()}
    doc = run_round_loop(cfg, s)
    moved = sum(mean_step(r, [0, 1, 2, 3]) for r in (1, 2, 3))  # 0.03 - 0.03 + 0.03
    for k, v in s.model.named_parameters():
        torch.testing.assert_close(v.detach(), start[k] + moved, rtol=0, atol=1e-6)
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2, 3]
    for rec in doc["rounds"][1:]:
        assert rec["train_loss"] == pytest.approx(30 / 10)  # sum (c + 1) n_c / sum n_c
        assert rec["sampled_clients"] == [0, 1, 2, 3] and rec["examples_trained"] == 100
        assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0 and "test_accuracy" in rec
    assert json.loads((cfg.run_dir / "results.json").read_text())["rounds"] == doc["rounds"]


def test_sampled_clients_alone_make_the_round(tmp_path):
    cfg = config(tmp_path, clients_per_round=2, rounds=2)
    s = fake_setup(cfg)
    start = s.model.weight.detach().clone()
    doc = run_round_loop(cfg, s)
    sampled = [list(sample_clients(cfg.num_clients, 2, cfg.seed, r)) for r in (1, 2)]
    assert [rec["sampled_clients"] for rec in doc["rounds"][1:]] == sampled
    moved = sum(mean_step(r, clients) for r, clients in zip((1, 2), sampled, strict=True))
    torch.testing.assert_close(s.model.weight.detach(), start + moved, rtol=0, atol=1e-6)


def test_a_rejected_update_is_left_out_and_counted(tmp_path):
    cfg = config(tmp_path, rounds=1)
    s = fake_setup(cfg, poison=frozenset({3}))
    start = s.model.weight.detach().clone()
    doc = run_round_loop(cfg, s)
    torch.testing.assert_close(s.model.weight.detach(), start + mean_step(1, [0, 1, 2]), rtol=0, atol=1e-6)
    rec = doc["rounds"][1]
    assert rec["accepted_clients"] == 3 and list(rec["rejected_clients"]) == ["3"]


def test_two_rounds_and_a_resume_equal_three_rounds(tmp_path):
    """FedAdam's moments travel through the checkpoint: the resumed run ends where the whole run does."""
    whole = config(tmp_path, run_name="whole", server_optimizer="adam", server_lr=0.1)
    a = fake_setup(whole)
    run_round_loop(whole, a)
    cut = config(tmp_path, run_name="cut", server_optimizer="adam", server_lr=0.1, rounds=2)
    run_round_loop(cut, fake_setup(cut))
    again = config(tmp_path, run_name="cut", server_optimizer="adam", server_lr=0.1, resume="true")
    b = fake_setup(again)
    path = find_resume_point(again)
    assert path is not None and path.name == "round-0002"
    first, records = restore(again, path, b.model, b.strategy, b.rt.device)
    b.resumed_from = str(path)
    doc = run_round_loop(again, b, first_round=first, records=records)
    assert first == 3 and [r["round"] for r in doc["rounds"]] == [0, 1, 2, 3]
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True))


class StopAfter(Callback):
    def __init__(self, rounds: int):
        self.rounds = rounds

    def on_round_end(self, run, record) -> None:
        if run.round >= self.rounds:
            run.stop(f"enough after round {run.round}")


def test_a_callback_stops_the_run_cleanly_after_its_round(tmp_path):
    cfg = config(tmp_path, rounds=5)
    doc = run_round_loop(cfg, callbacks=[StopAfter(2)])
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert doc["stopped_early"] == "enough after round 2"
    assert find_resume_point(config(tmp_path, rounds=5, resume="true")).name == "round-0002"
