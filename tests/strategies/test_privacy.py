"""Client-level DP: clipping bounds every update, the noise has the configured size in both
placements, epsilon is the accountant's, the noise is seeded (simulation == torchrun, resume
bit-identical), and the budget stops a run cleanly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fl.config import Config
from fl.strategies import ClientUpdate, build_strategy, privacy
from fl.strategies.base import ServerStep


def test_every_clipped_update_is_within_the_bound():
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 0.3, 1.0, 50.0):
        delta = {"a": torch.randn(7, 3, generator=gen) * scale, "b": torch.randn(11, generator=gen) * scale}
        clipped, norm = privacy.clip(delta, 0.5)
        after = math.sqrt(sum(float((v.double() ** 2).sum()) for v in clipped.values()))
        assert after <= 0.5 + 1e-6
        if norm <= 0.5:  # small updates pass unchanged
            assert all(torch.equal(clipped[k], delta[k]) for k in delta)


@pytest.mark.parametrize("placement", ["server", "clients"])
def test_noise_on_zero_updates_has_the_configured_std(placement):
    """All-zero updates from m sampled clients: the noise on the sum has std z * C (within 3%, 200k coordinates)."""
    z, c = 1.3, 0.7
    s = build_strategy(
        Config(num_clients=20, clients_per_round=5, dp_clip=c, dp_noise_multiplier=z, dp_noise_placement=placement)
    )
    plan = s.plan_round(3)
    assert plan.clients  # Poisson sampling picked some clients this round
    glob = {"w": torch.zeros(200_000)}
    template = s.upload_template(glob, plan)
    sums = template.zeros()
    for client in plan.clients:
        u = ClientUpdate(client, 10, {"w": torch.zeros(200_000)}, loss_sum=1.0, seen=10)
        sums.add_(s.client_message(template, u, plan))
    step = ServerStep(plan, glob, sums, None, load=lambda state: None)
    s.aggregator.server_step(step)
    noised_sum = step.delta["w"] * s.aggregator.dp.denominator
    assert step.record["dp_epsilon"] > 0
    assert float(noised_sum.std()) == pytest.approx(z * c, rel=0.03)
    assert abs(float(noised_sum.mean())) < 0.01
    assert sums.scalars[f"c{plan.clients[0]}.loss_sum"] == 0.0  # per-client statistics stay on the rank


def test_poisson_sampling_is_seeded_and_near_its_rate():
    picks = [privacy.poisson_sample(200, 0.1, 42, r) for r in range(1, 101)]
    assert picks == [privacy.poisson_sample(200, 0.1, 42, r) for r in range(1, 101)]
    mean = sum(len(p) for p in picks) / len(picks)
    assert 17 < mean < 23  # q N = 20


def test_epsilon_is_the_accountants_answer():
    """Against Opacus' own RDP analysis, computed here step by step for (q, sigma, k, delta)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    q, sigma, k, delta = 0.1, 1.1, 7, 1e-5
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=k, orders=orders)
    expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    assert privacy.Accountant(sigma, q).epsilon(delta, k) == pytest.approx(expected, rel=1e-9)
    assert privacy.Accountant(0.0, q).epsilon(delta, 1) == math.inf
    assert privacy.default_delta(200) == pytest.approx(200**-1.1)


def dp_overrides(tiny_overrides: list[str], tmp_path, *extra: str) -> list[str]:
    """The tiny overrides under DP: 8 clients, 4 a round, updates clipped to 0.5, writing under tmp_path."""
    keys = {e.split("=")[0] for e in extra} | {"output_dir", "num_clients"}
    keep = [o for o in tiny_overrides if o.split("=")[0] not in keys]
    return [*keep, f"output_dir={tmp_path}", "num_clients=8", "clients_per_round=4", "dp_clip=0.5", *extra]


@pytest.mark.slow
def test_dp_run_records_epsilon_and_matches_torchrun(tmp_path, tiny_overrides):
    from fl.config.recipe import load_config
    from fl.job import run_document as run
    from tests.helpers import RECIPE, run_torchrun

    base = dp_overrides(tiny_overrides, tmp_path, "dp_noise_multiplier=0.8", "dp_noise_placement=clients", "rounds=3")
    proc = run_torchrun(3, [*base, "run_name=dist"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = run(load_config(RECIPE, [*base, "run_name=sim"]))
    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    for x, y in zip(sim["rounds"][1:], dist["rounds"][1:], strict=True):
        assert x["test_loss"] == pytest.approx(y["test_loss"], abs=1e-4)
        assert x["sampled_clients"] == y["sampled_clients"]
        assert x["dp_epsilon"] == y["dp_epsilon"]
        k = x["round"]
        assert x["dp_epsilon"] == pytest.approx(privacy.Accountant(0.8, 0.5).epsilon(8**-1.1, k), rel=1e-12)
        assert x["train_loss"] is None and x["num_examples"] is None  # nothing about one client's data
    assert [r["dp_epsilon"] for r in dist["rounds"][1:]] == sorted(r["dp_epsilon"] for r in dist["rounds"][1:])
    a, b = (
        load_file(tmp_path / "dist" / "adapter" / "adapter_model.safetensors"),
        load_file(tmp_path / "sim" / "adapter" / "adapter_model.safetensors"),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_target_epsilon_stops_cleanly_with_a_checkpoint(tmp_path, tiny_overrides):
    from fl.config.recipe import load_config
    from fl.job import run_document as run
    from tests.helpers import RECIPE

    over = dp_overrides(tiny_overrides, tmp_path, "rounds=20", "dp_noise_multiplier=1.0", "checkpoint_every=5")
    target = privacy.Accountant(1.0, 0.5).epsilon(8**-1.1, 3) + 1e-3  # 3 rounds fit, the 4th does not
    doc = run(load_config(RECIPE, [*over, f"dp_target_epsilon={target}"]))
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2, 3] and doc["status"] == "completed"
    assert "round 4 would spend epsilon" in doc["stopped_early"]
    assert (tmp_path / "tiny" / "checkpoints" / "round-0003").is_dir()  # not due (every 5), written at the stop
    assert (tmp_path / "tiny" / "adapter").is_dir()


@pytest.mark.slow
def test_dp_with_fedavg_clips_every_weight(tmp_path, tiny_overrides):
    """Full fine-tuning under DP: the update of every weight is clipped and noised, and the run records epsilon."""
    from fl.config.recipe import load_config
    from fl.job import run_document as run
    from tests.helpers import RECIPE

    over = [o for o in tiny_overrides if not o.startswith(("output_dir", "rounds"))]
    over += [f"output_dir={tmp_path}", "scheme=fedavg", "lr=1e-3", "rounds=1", "dp_clip=0.1", "dp_noise_multiplier=0"]
    doc = run(load_config(RECIPE, over))
    assert doc["rounds"][1]["dp_epsilon"] == math.inf  # no noise: no privacy, and the record says so (null + flag)
    from transformers import AutoModelForSequenceClassification

    before = AutoModelForSequenceClassification.from_pretrained(doc["model_path"]).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny" / "model").state_dict()
    moved = math.sqrt(sum(float(((after[k] - before[k]).double() ** 2).sum()) for k in before if k in after))
    # the global update is the mean of clipped updates over q N = 4: at most dp_clip in norm
    assert 0 < moved <= 0.1 + 1e-4


@pytest.mark.slow
def test_dp_with_the_fedkdlora_student(tmp_path, tiny_overrides, tiny_model_dir):
    """The student's adapter is clipped and noised; the teacher learns on rank 0 from the noised model and
    public rows; client-placed KD (logits leaving the clients) is refused."""
    from fl.cli import main
    from fl.config.recipe import load_config
    from fl.job import run_document as run
    from tests.helpers import RECIPE

    kd_recipe = RECIPE.parent / "fedkdlora.yaml"
    over = [o for o in tiny_overrides if not o.startswith(("output_dir", "rounds"))]
    over += [
        f"output_dir={tmp_path}",
        f"teacher_model={tiny_model_dir}",
        "teacher_pretrain_epochs=1",
        "rounds=1",
        "kd_public_examples=16",
        "student_layers=1",
    ]
    assert main(["pretrain-teacher", str(kd_recipe), *over, "run_name=teacher"]) == 0
    kd = [
        *over,
        f"teacher_ckpt={tmp_path / 'teacher' / 'teacher'}",
        "dp_clip=0.5",
        "dp_noise_multiplier=1.0",
        "run_name=kd",
    ]
    doc = run(load_config(kd_recipe, kd))
    rec = doc["rounds"][1]
    assert rec["dp_epsilon"] > 0 and "kd_student_loss" in rec and isinstance(rec["teacher_test_accuracy"], float)
    assert main(["run", str(kd_recipe), *kd, "kd_placement=clients", "run_name=kd2"]) == 2  # logits would leak
