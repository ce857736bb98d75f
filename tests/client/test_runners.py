"""The sequential client runner on the tiny model: one update per hosted sampled client, each the
change from its start state, checked before it leaves, with the parts' uploads beside it."""

from __future__ import annotations

import torch

from fl import comm, models
from fl.config.recipe import load_config
from fl.faults import Faults
from fl.setup import prepare
from tests.helpers import RECIPE


def setup_of(tiny_overrides, *extra):
    torch.set_num_threads(1)
    return prepare(load_config(RECIPE, [*tiny_overrides, *extra]), comm.Runtime())


def test_runner_yields_each_sampled_client_once_with_its_change(tiny_overrides):
    s = setup_of(tiny_overrides, "clients_per_round=2")
    glob = models.snapshot(models.get_trainable_state(s.model))
    plan = s.strategy.plan_round(1)
    seen = []
    updates = list(s.runner.train(plan, glob, seen.append))
    assert [u.client for u in updates] == list(plan.clients) and len(plan.clients) == 2
    assert sum(seen) == s.runner.examples(plan) == sum(len(s.shards[c]) for c in plan.clients)  # 1 epoch, no cap
    for u in updates:
        assert set(u.delta) == set(glob) and u.reject == 0 and u.num_examples == len(s.shards[u.client])
        assert any(float(v.abs().max()) > 0 for v in u.delta.values())
        assert u.parts == {}  # FedLoRA measures the aggregation error from the gathered updates: nothing else travels
    # every client starts from the global state: replaying client 0 alone gives the same change
    again = next(s.runner.train(plan, glob))
    assert all(torch.equal(again.delta[k], updates[0].delta[k]) for k in glob)


def test_a_poisoned_client_is_rejected_on_its_rank_and_sends_no_parts(tiny_overrides):
    s = setup_of(tiny_overrides)
    s.runner.faults = Faults.parse("nan:client=1:round=1")
    glob = models.snapshot(models.get_trainable_state(s.model))
    updates = {u.client: u for u in s.runner.train(s.strategy.plan_round(1), glob)}
    assert updates[1].reject == 1 and updates[1].parts == {} and updates[0].reject == 0


def test_faults_parse_and_hit_only_their_target():
    f = Faults.parse("nan:client=2:round=*")
    assert f.poisons(2, 1) and f.poisons(2, 9) and not f.poisons(1, 1)
    g = Faults.parse("exit:rank=1:round=3")
    assert g.hits("rank", 1, 3) and not g.hits("rank", 1, 2) and not g.poisons(1, 3)
    assert not Faults.parse(None).poisons(0, 1)


def test_the_rows_a_round_trains_count_max_local_steps(tiny_overrides):
    """What the progress bars expect is what training steps through: with max_local_steps too."""
    from fl.client.train import LocalSchedule

    assert LocalSchedule(1e-3, epochs=2, batch_size=16, max_steps=8).examples_for(500) == 128
    assert LocalSchedule(1e-3, epochs=2, batch_size=16).examples_for(40) == 80
    s = setup_of(tiny_overrides, "max_local_steps=2")
    glob = models.snapshot(models.get_trainable_state(s.model))
    plan = s.strategy.plan_round(1)
    seen = []
    list(s.runner.train(plan, glob, seen.append))
    assert sum(seen) == s.runner.examples(plan) == 2 * 16 * len(plan.clients)
