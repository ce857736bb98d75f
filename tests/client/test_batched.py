"""Batched client training (`parallel_clients`) against sequential training on the tiny model: the
same per-client updates (fp32, lora_dropout=0) with equal and unequal shards, FedProx, SCAFFOLD and
FlexLoRA's mask; and end to end, the same rounds."""

from __future__ import annotations

import pytest
import torch

from fl import comm, models
from fl.client.batched import StackedAdamW
from fl.config.recipe import load_config
from fl.setup import prepare
from tests.conftest import lm_overrides
from tests.helpers import RECIPE


def updates(over: list[str], parallel: int, rounds: int = 1) -> list[dict]:
    """Each round's client updates (client -> delta) from the runner a setting builds; the global
    state moves by their plain sum between rounds (enough to compare the runners)."""
    torch.set_num_threads(1)
    s = prepare(load_config(RECIPE, [*over, f"parallel_clients={parallel}"]), comm.Runtime())
    glob = models.snapshot(models.get_trainable_state(s.model))
    out = []
    for r in range(1, rounds + 1):
        s.strategy.read_downlink(s.strategy.downlink(glob, r, {}))  # what the round's start sends (SCAFFOLD's c)
        plan = s.strategy.plan_round(r)
        got = {u.client: u for u in s.runner.train(plan, glob)}
        out.append(got)
        glob = {k: v + sum(u.delta[k] for u in got.values()) / len(got) for k, v in glob.items()}
    return out


def assert_same(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for c in ra:
            ua, ub = ra[c], rb[c]
            assert (ua.num_examples, ua.seen, ua.reject) == (ub.num_examples, ub.seen, ub.reject)
            assert ua.loss_sum == pytest.approx(ub.loss_sum, rel=1e-5)
            for k in ua.delta:
                assert float((ua.delta[k] - ub.delta[k]).abs().max()) < tol, (c, k)
            for part in ua.parts:
                for k in ua.parts[part]:
                    x, y = ua.parts[part][k], ub.parts[part][k]  # weighted by the examples: scale the tolerance
                    assert float((x - y).abs().max()) <= 10 * tol * max(1.0, float(x.abs().max())), (c, part, k)


CASES = {
    "iid": [],
    "dirichlet": ["partition=dirichlet", "dirichlet_alpha=0.3"],  # unequal shards: some clients finish early
    "fedprox-scaffold": ["prox_mu=0.5", "scaffold=true"],
    "head-lr-cosine": ["head_lr=1e-2", "lr_scheduler=cosine", "warmup_ratio=0.2", "weight_decay=0.01"],
    "flex": ["lora_aggregation=flex", "lora_ranks=4,2"],
}


def no_dropout(tiny_overrides: list[str], model_dir) -> list[str]:
    """The tiny overrides on the tiny BERT without dropout (batched training draws one dropout mask for
    the K clients, sequential training one per client: the draws differ; everything else is equal)."""
    return [o for o in tiny_overrides if not o.startswith("model=")] + [f"model={model_dir}", "lora_dropout=0"]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_batched_updates_equal_sequential_ones(case, tiny_overrides, tiny_model_nodrop_dir):
    over = [*no_dropout(tiny_overrides, tiny_model_nodrop_dir), *CASES[case]]
    assert_same(updates(over, 1, rounds=2), updates(over, 4, rounds=2))


def test_batched_causal_lm_updates_equal_sequential_ones(tiny_llama_dir, tiny_sft, tmp_path):
    over = lm_overrides(tiny_llama_dir, *tiny_sft, tmp_path, "b") + ["partition=iid", "max_new_tokens=0"]
    assert_same(updates(over, 1), updates(over, 3))


def test_stacked_adamw_is_torch_adamw_per_client():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=g)
    grads = [torch.randn(3, 4, 5, generator=g) for _ in range(4)]
    p = torch.nn.Parameter(w.clone())
    opt = StackedAdamW([p], 3, [1.0], weight_decay=0.1)
    refs = [torch.nn.Parameter(w[c].clone()) for c in range(3)]
    torch_opts = [torch.optim.AdamW([refs[c]], lr=0.01 * (c + 1), weight_decay=0.1) for c in range(3)]
    for i, gr in enumerate(grads):
        active = [True, i < 2, True]  # client 1 stops after two steps
        p.grad = gr.clone()
        opt.step([0.01, 0.02, 0.03], active)
        for c in range(3):
            if active[c]:
                refs[c].grad = gr[c].clone()
                torch_opts[c].step()
    for c in range(3):
        torch.testing.assert_close(p.data[c], refs[c].data, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_batched_rounds_equal_sequential_rounds_and_torchrun(tmp_path, tiny_overrides, tiny_model_nodrop_dir):
    from fl.job import run_document as run
    from tests.helpers import run_torchrun

    base = no_dropout(tiny_overrides, tiny_model_nodrop_dir)
    base = [o for o in base if not o.startswith(("output_dir", "run_name"))]
    base += [f"output_dir={tmp_path}", "lora_dropout=0", "partition=dirichlet", "dirichlet_alpha=0.5"]
    seq = run(load_config(RECIPE, [*base, "run_name=seq"]))
    bat = run(load_config(RECIPE, [*base, "run_name=bat", "parallel_clients=4"]))
    proc = run_torchrun(3, [*base, "run_name=dist", "parallel_clients=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    for a, b, c in zip(seq["rounds"], bat["rounds"], dist["rounds"], strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5) == pytest.approx(c["test_loss"], abs=1e-4)
        assert a["test_accuracy"] == b["test_accuracy"] == c["test_accuracy"]
