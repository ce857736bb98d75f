"""End to end on a tiny BERT: simulation and real torchrun (gloo) runs, checked against hand math."""

from __future__ import annotations

import json

import pytest
import torch

from fl.comm.message import Message
from fl.config.recipe import load_config
from fl.job import run_document as run
from tests.conftest import make_overrides, score
from tests.helpers import RECIPE, ROUND_KEYS, adapter_tensors, hand_rounds, run_torchrun


@pytest.fixture(scope="module")
def torchrun_result(tmp_path_factory, tiny_model_dir, tiny_task):
    """One real 3-process gloo job: rank 0 aggregates, 2 client ranks host 4 clients."""
    out = tmp_path_factory.mktemp("torchrun")
    overrides = make_overrides(tiny_model_dir, *tiny_task, out, "dist")
    overrides += ["partition=dirichlet", "dirichlet_alpha=1.0"]  # unequal shards, so weights matter
    proc = run_torchrun(3, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "dist", overrides


@pytest.mark.slow
def test_torchrun_results_file(torchrun_result):
    run_dir, _ = torchrun_result
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "completed" and doc["elapsed_s"] > 0
    assert doc["env"]["backend"] == "gloo" and doc["env"]["world_size"] == 3
    assert len(set(doc["client_examples"])) > 1  # the weighted mean differs from the plain mean
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    for rec in doc["rounds"]:
        assert ROUND_KEYS <= set(rec)
    adapter = adapter_tensors(run_dir)
    numel = sum(t.numel() for t in adapter.values())
    assert doc["payload_bytes"] == 4 * numel == Message({"global": adapter}).nbytes
    upload_scalars = 2 + 5 * 4  # weight, accepted, and 5 per sampled client
    for rec in doc["rounds"][1:]:
        # a deployment moves one adapter per client each way; up, the aggregation error gathers every
        # client's own update (2 client ranks x their 2 clients), down one buffer per client rank
        assert rec["bytes_up"] == rec["bytes_down"] == 4 * 4 * numel
        assert rec["wire_bytes_up"] == 2 * 2 * 4 * (numel + upload_scalars)
        assert rec["bytes_products"] == 0 and rec["aggregation_error"] > 0
        assert rec["wire_bytes_down"] == 2 * 4 * numel
        assert rec["time_train_s"] > 0 and rec["time_idle_s"] >= 0 and rec["time_comm_s"] >= 0
        assert rec["num_examples"] == sum(doc["client_examples"])
        assert rec["sampled_clients"] == [0, 1, 2, 3] and rec["rejected_clients"] == {}
    assert doc["rounds"][0]["wire_bytes_down"] == 2 * 4 * numel  # the initial model, sent once before round 1
    assert doc["rounds"][0]["bytes_up"] == 0
    for rec in doc["rounds"]:  # the 2 client ranks each send a confusion matrix [2, 2], a loss sum, 3 figures a rank
        assert rec["bytes_eval"] == 2 * 4 * (2 * 2 + 1 + 3 * 3)
    assert doc["env"]["layout"]["case"] == "cpu"


@pytest.mark.slow
def test_torchrun_global_adapter_is_weighted_mean_of_client_updates(torchrun_result):
    run_dir, overrides = torchrun_result
    cfg = load_config(RECIPE, overrides)
    expected = hand_rounds(cfg, rounds=2)[-1]
    got = adapter_tensors(run_dir)
    assert set(got) == set(expected)  # adapter file keys are peft's state-dict keys
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_simulation_matches_torchrun(torchrun_result, tmp_path):
    run_dir, overrides = torchrun_result
    sim = [o for o in overrides if not o.startswith(("output_dir", "run_name"))]
    doc = run(load_config(RECIPE, sim + [f"output_dir={tmp_path}", "run_name=sim"]))
    assert doc["env"]["backend"] == "none (simulation)"
    a, b = adapter_tensors(run_dir), adapter_tensors(tmp_path / "sim")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    dist_doc = json.loads((run_dir / "results.json").read_text())
    for x, y in zip(doc["rounds"], dist_doc["rounds"], strict=True):
        assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1e-6)
        assert x["test_loss"] == pytest.approx(y["test_loss"], abs=1e-4)
        assert (x["bytes_up"], x["bytes_down"]) == (y["bytes_up"], y["bytes_down"])  # same meaning everywhere


@pytest.mark.slow
def test_exported_adapter_reproduces_final_metrics(torchrun_result, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, overrides = torchrun_result
    cfg = load_config(RECIPE, overrides)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    m = score(model, AutoTokenizer.from_pretrained(run_dir / "adapter"), cfg)
    final = json.loads((run_dir / "results.json").read_text())["rounds"][-1]
    assert m["accuracy"] == final["test_accuracy"]
    assert m["loss"] == pytest.approx(final["test_loss"], abs=1e-5)


def test_fedavg_moves_every_weight_and_saves_model(tmp_path, tiny_overrides, tiny_model_dir):
    over = [o for o in tiny_overrides if not o.startswith("rounds")] + ["rounds=1", "scheme=fedavg", "lr=1e-3"]
    doc = run(load_config(RECIPE, over))
    run_dir = tmp_path / "out" / "tiny"
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "model" / "tokenizer.json").is_file()
    assert doc["trainable_parameters"] == doc["total_parameters"]
    assert doc["rounds"][1]["bytes_up"] == 4 * 4 * doc["total_parameters"]  # 4 clients, one model each
    assert doc["rounds"][1]["wire_bytes_up"] == 0  # one process: nothing crossed a wire
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert sum(p.numel() for p in reloaded.parameters()) == doc["total_parameters"]


def test_grouped_batches_and_auto_precision_run_and_are_recorded(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith(("rounds", "batch_size"))] + ["rounds=1", "batch_size=2"]
    plain = run(load_config(RECIPE, [*over, "run_name=plain", "group_by_length=false"]))
    grouped = run(load_config(RECIPE, [*over, "run_name=grouped", "group_by_length=true", "precision=auto"]))
    from fl.models.precision import resolve_precision

    assert grouped["env"]["precision_rank0"] == resolve_precision("auto", torch.device("cpu"))
    assert plain["env"]["precision_rank0"] == "fp32" and grouped["config"]["group_by_length"] is True
    # the same rows train, in another order: the same examples seen, a different model
    assert grouped["rounds"][1]["examples_trained"] == plain["rounds"][1]["examples_trained"]
    assert grouped["rounds"][1]["train_loss"] != plain["rounds"][1]["train_loss"]
