"""Callbacks: a user's code at fixed points of a run, on rank 0, with Hugging Face's event names.

    on_train_begin   after set-up, before round 0 is scored (a resumed run: before its first round)
    on_round_begin   before the round's clients train
    on_evaluate      after the round is scored, before its record is written: return a mapping to add
                     keys to the record (existing keys cannot be replaced)
    on_log           a record was written to results.json (round 0 too): trackers log it here
    on_round_end     after the round's record and checkpoint: call `run.stop(reason)` to end the run
                     cleanly (the round is checkpointed, the model exported, the run resumable)
    on_train_end     once, however the run ends (`doc["status"]`: completed, interrupted, failed)

A callback reads; it changes nothing of the training (the record it is given is a copy). Callbacks
run on rank 0 only; a stop reaches every rank through one broadcast per round, made only when the
run has callbacks. Trackers (`log_to=tensorboard|wandb`, `fl.output.tracking`) are callbacks too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """What callbacks see of the run: its config, folder, the round, every record so far."""

    config: Any  # the run's fl.Config
    run_dir: Path
    round: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)  # results.json's rounds (read, do not change)
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """End the run after this round, cleanly; `reason` goes into results.json (`stopped_early`)."""
        self.stop_reason = self.stop_reason or str(reason)


class Callback:
    """Subclass and override the events you need (each is a no-op here)."""

    def on_train_begin(self, run: RunInfo) -> None:
        pass

    def on_round_begin(self, run: RunInfo) -> None:
        pass

    def on_evaluate(self, run: RunInfo, record: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return None

    def on_log(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        pass

    def on_round_end(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        pass

    def on_train_end(self, run: RunInfo, doc: Mapping[str, Any]) -> None:
        pass


class CallbackList:
    """Rank 0's callbacks, called in order (an empty list on the other ranks)."""

    def __init__(self, callbacks: Sequence[Callback], config: Any, run_dir: Path):
        self.callbacks = list(callbacks)
        self.run = RunInfo(config, run_dir)
        self.ended = False
        self.stops = False  # whether rank 0 has callbacks (so a stop is broadcast): set alike on every rank

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def begin(self, records: list[dict[str, Any]], first_round: int) -> None:
        self.run.records, self.run.round = records, first_round
        for cb in self.callbacks:
            cb.on_train_begin(self.run)

    def round_begin(self, round_idx: int) -> None:
        self.run.round = round_idx
        for cb in self.callbacks:
            cb.on_round_begin(self.run)

    def evaluate(self, record: dict[str, Any]) -> dict[str, Any]:
        """The keys the callbacks add to the record."""
        added: dict[str, Any] = {}
        for cb in self.callbacks:
            got = cb.on_evaluate(self.run, copy.deepcopy(record)) or {}
            clash = sorted(set(got) & (set(record) | set(added)))
            if clash:
                raise ValueError(f"callback {type(cb).__name__} returned {clash[0]!r}, a key the record already has")
            added.update(got)
        return added

    def log(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_log(self.run, copy.deepcopy(record))

    def round_end(self, record: dict[str, Any]) -> str | None:
        """The callbacks' reason to stop after this round, or None."""
        for cb in self.callbacks:
            cb.on_round_end(self.run, copy.deepcopy(record))
        return self.run.stop_reason

    def end(self, doc: Mapping[str, Any]) -> None:
        if self.ended:
            return
        self.ended = True
        for cb in self.callbacks:
            cb.on_train_end(self.run, doc)


class EarlyStopping(Callback):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` rounds
    (Hugging Face's EarlyStoppingCallback, counted in rounds)."""

    def __init__(self, metric: str = "test_accuracy", patience: int = 2, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min") or patience < 1 or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError("EarlyStopping takes mode max|min, patience >= 1 and a finite min_delta >= 0")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best: float | None = None
        self.waited = 0

    def on_train_begin(self, run: RunInfo) -> None:  # a resumed run starts from the records it has
        self.best, self.waited = None, 0
        for rec in run.records:
            self.update(rec)

    def update(self, record: Mapping[str, Any]) -> None:
        value = record.get(self.metric)
        if value is None:
            return
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.waited = float(value), 0
        else:
            self.waited += 1

    def on_round_end(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        self.update(record)
        if self.waited >= self.patience:
            run.stop(f"{self.metric} did not improve on {self.best:.4g} for {self.patience} round(s) (early stopping)")
