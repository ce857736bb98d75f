"""A model-free aggregator: in a torchrun FedLoRA job rank 0 holds the adapter's state and the task
without its rows (from rank 1), never imports peft, transformers' modeling code or datasets,
computes what a model-holding rank 0 computes, and builds the model only to export it.

Kept free of top-level imports of transformers and peft: the spawned ranks import this module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fl import models
from fl.config import Config
from tests.helpers import spawn

ROOT = Path(__file__).resolve().parents[2]
MODEL_LIBRARIES = ("peft", "transformers.modeling_utils", "datasets")


def test_server_model_takes_and_checks_a_state_like_a_model():
    state = {"a.lora_A.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)}
    m = models.ServerModel(state, trainable=8, total=100)
    assert models.get_trainable_state(m) is state and models.count_parameters(m) == (8, 100)
    new = {"a.lora_A.weight": torch.ones(2, 3), "head.bias": torch.full((2,), 2.0)}
    models.set_trainable_state(m, new)
    assert torch.equal(state["a.lora_A.weight"], new["a.lora_A.weight"]) and state["head.bias"].tolist() == [2.0, 2.0]
    assert state["head.bias"] is not new["head.bias"]  # copied in place, not aliased
    with pytest.raises(ValueError, match="keys differ"):
        models.set_trainable_state(m, {"a.lora_A.weight": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="shapes differ"):
        models.set_trainable_state(m, {"a.lora_A.weight": torch.ones(3, 2), "head.bias": torch.ones(2)})


@pytest.mark.parametrize(
    ("distributed", "overrides", "free"),
    [
        (True, {"scheme": "fedlora"}, True),
        (True, {"scheme": "fedlora", "lora_aggregation": "ffa"}, True),
        (False, {"scheme": "fedlora"}, False),  # the simulation's one process trains and scores
        (True, {"scheme": "fedavg"}, False),  # the global state is every weight
        (True, {"scheme": "fedlora", "lora_aggregation": "fedex"}, False),  # the server merges into W0
        (True, {"scheme": "fedkdlora", "teacher_ckpt": "t"}, False),  # the server distils
    ],
)
def test_which_jobs_aggregate_without_a_model(distributed, overrides, free):
    from fl.setup import model_free_server
    from fl.strategies import build_strategy, model_spec

    cfg = Config(**overrides)
    spec, strategy = model_spec(cfg), build_strategy(cfg)
    rt = SimpleNamespace(distributed=distributed, world_size=3 if distributed else 1)
    assert model_free_server(rt, spec, strategy) is free
    assert model_free_server(SimpleNamespace(distributed=True, world_size=1), spec, strategy) is False


def _job(rank: int, overrides: list[str], out: str) -> None:
    from fl.config.recipe import load_config
    from fl.job import run_document as run

    run(load_config(ROOT / "recipes" / "fedlora.yaml", overrides))
    loaded = [m for m in MODEL_LIBRARIES if m in sys.modules]
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(loaded))


@pytest.mark.slow
def test_rank0_of_a_fedlora_job_never_loads_the_model_and_matches_the_simulation(tmp_path, tiny_overrides):
    from fl.config.recipe import load_config
    from fl.job import run_document as run

    spawn(_job, 3, [*tiny_overrides, "save_model=false", "run_name=dist"], str(tmp_path))
    assert json.loads((tmp_path / "rank0.json").read_text()) == []  # no peft, no modeling code, no datasets
    assert json.loads((tmp_path / "rank1.json").read_text()) == list(MODEL_LIBRARIES)
    sim = run(load_config(ROOT / "recipes" / "fedlora.yaml", [*tiny_overrides, "save_model=false", "run_name=sim"]))
    out = Path(next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("output_dir=")))
    dist = json.loads((out / "dist" / "results.json").read_text())
    assert dist["env"]["rank0_model"] == "trainable state only" and sim["env"]["rank0_model"] == "model"
    same = (
        "trainable_parameters",
        "total_parameters",
        "model_path",
        "public_examples",
        "client_examples",
        "test_examples",
        "data_notes",
    )
    assert {k: dist[k] for k in same} == {k: sim[k] for k in same}
    for a, b in zip(dist["rounds"], sim["rounds"], strict=True):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-4)
