"""FedKDLoRA's part without a process group: the round's public rows, what goes down and up in
each placement, the bytes, and the client term mixing the KL into the loss."""

from __future__ import annotations

import torch

from fl.kd.part import Distillation, DistillTerm, cycle_rows, public_rows
from fl.strategies.base import ByteCount, ClientContext, RoundPlan
from fl.tasks.kd_losses import kl_divergence

K = 3


class Rows(list):
    def subset(self, rows):
        return Rows(self[i] for i in rows)


class StubTask:
    """Rows are indices; the 'model' output for row i is the fixed logits table[i]."""

    table = torch.randn(20, K, generator=torch.Generator().manual_seed(0))

    def kd_like(self, data, device):
        return {"logits": torch.zeros(len(data), K, device=device)}

    def kd_reply_like(self, data, device):
        return torch.zeros(len(data), K, device=device)

    def kd_kl(self, model, data, rows, targets, temperature, device):
        out = {"logits": self.table[[data[r] for r in rows]]}
        return kl_divergence(out["logits"], targets["logits"][rows], temperature), out


def part(on_clients: bool, **kw) -> Distillation:
    return Distillation(
        on_clients,
        per_round=8,
        seed=1,
        rounds=3,
        alpha=0.25,
        temperature=2.0,
        task=StubTask(),
        public_size=20,
        public=Rows(range(20)),
        **kw,
    )


def test_public_rows_are_seeded_per_round_and_join_the_plan():
    assert public_rows(1, 2, 20, 8) == public_rows(1, 2, 20, 8) != public_rows(1, 3, 20, 8)
    assert public_rows(1, 2, 5, 8) == list(range(5))  # fewer rows than asked: all of them
    plan = part(False).plan(RoundPlan(2, (0, 1), 0.1))
    assert plan.extra["public_rows"] == tuple(public_rows(1, 2, 20, 8)) and plan.clients == (0, 1)


def test_server_placement_moves_nothing_and_clients_placement_moves_logits_both_ways():
    glob = {"w": torch.zeros(2)}
    plan = part(True).plan(RoundPlan(1, (0, 1), 0.1))
    assert part(False).down(glob, 1, {}) == {} and part(False).upload(glob, plan) == {}
    record: dict = {}
    down = part(True).down(glob, 2, record)  # client ranks have no teacher: zeros of the right shape
    assert down["teacher"]["logits"].shape == (8, K) and "time_server_kd_s" in record
    assert part(True).down(glob, 4, {}) == {}  # after the last round nothing is distilled
    assert part(True).upload(glob, plan)["logits"]["student"].shape == (8, K)
    counts = ByteCount({0: 100, 1: 100}, {0: 100, 1: 100}, {0: 100, 1: 100}, {"bytes_logits": 0})
    part(True).add_bytes(counts, plan, glob)
    assert counts.up == counts.down == {0: 100 + 8 * K * 4, 1: 100 + 8 * K * 4}
    assert counts.extra["bytes_logits"] == 2 * 2 * 8 * K * 4


def test_the_client_term_mixes_the_kl_on_the_next_public_batch():
    data = list(range(10, 18))  # the round's public rows (positions into StubTask.table)
    targets = torch.randn(8, K, generator=torch.Generator().manual_seed(1))
    ctx = ClientContext(
        0, RoundPlan(1, (0,), 0.1), {}, seed=5, batch_size=3, eval_batch_size=8, device=torch.device("cpu")
    )
    term = DistillTerm(StubTask(), data, {"logits": targets}, 0.25, 2.0, ctx)
    rows = next(cycle_rows(8, 3, 5))
    got = term.loss(None, torch.tensor(1.0))
    kl = kl_divergence(StubTask.table[[data[r] for r in rows]], targets[rows], 2.0)
    torch.testing.assert_close(got, 0.75 * torch.tensor(1.0) + 0.25 * kl)
    p = part(True, train_here=False)
    p.targets = {"logits": targets}
    assert p.client_terms(ctx) == []  # a rank that hosts no client trains without KD
