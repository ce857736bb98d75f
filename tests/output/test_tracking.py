"""TensorBoard tracking: one scalar per record key per round, and each client's train loss."""

from __future__ import annotations

import pytest

from fl.config.recipe import load_config
from fl.job import run_document as run
from fl.output.tracking import scalars
from tests.helpers import RECIPE


def test_scalars_flatten_the_record():
    rec = {
        "round": 2,
        "test_loss": 0.5,
        "rejected_clients": {},
        "client_train_loss": {"0": 0.4, "3": 0.6},
        "sampled_clients": [0, 3],
        "train_loss": None,
        "status": "x",
        "bad": float("nan"),
    }
    assert scalars(rec) == {"test_loss": 0.5, "client_train_loss/0": 0.4, "client_train_loss/3": 0.6}


def test_tensorboard_event_files_hold_every_record_key(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + [
        f"output_dir={tmp_path}",
        "log_to=tensorboard",
    ]
    doc = run(load_config(RECIPE, over))
    events = EventAccumulator(str(tmp_path / "tiny" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for rec in doc["rounds"]:
        for key, value in scalars(rec).items():
            assert key in tags, key
            points = {e.step: e.value for e in events.Scalars(key)}
            assert points[rec["round"]] == pytest.approx(value, rel=1e-6)
    assert {f"client_train_loss/{c}" for c in range(4)} <= tags
    assert len(events.Scalars("test_accuracy")) == len(doc["rounds"])  # one per round
