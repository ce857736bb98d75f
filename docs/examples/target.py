"""A callback that stops early: once `metric` reaches `target`, the run ends cleanly after that
round (checkpointed, model exported, resumable with more rounds); every record also says whether
the target was reached.

    callbacks: [{_component_: docs.examples.target.StopAtTarget, metric: test_accuracy, target: 0.8}]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fl
from fl.output.callbacks import RunInfo


class StopAtTarget(fl.Callback):
    def __init__(self, metric: str = "test_accuracy", target: float = 0.8):
        self.metric, self.target = metric, target

    def on_evaluate(self, run: RunInfo, record: Mapping[str, Any]) -> dict[str, Any]:
        value = record.get(self.metric)
        return {"target_reached": value is not None and value >= self.target}

    def on_round_end(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        if record.get("target_reached"):
            run.stop(f"{self.metric}={record[self.metric]:.4f} reached the target {self.target}")
