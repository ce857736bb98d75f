"""What rank 0 shows and writes: rich progress and tables, results.json, the environment record.

results.json is rewritten atomically (`fl.output.rundir.atomic_write_json`) after every round, so a crash
never leaves a half-written file and every finished round is on disk.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fl.output.rundir import atomic_write_json

COLUMNS = ("test_accuracy", "test_mcc", "test_f1")  # the task's record keys shown per round (classification's)


def round_columns(task_columns: Sequence[str]) -> tuple[str, ...]:
    return ("round", "test_loss", *task_columns, "train_loss", "time_s", "bytes_up", "bytes_down")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(
    backend: str | None, world_size: int, device: torch.device, threads: int, layout: Any = None
) -> dict[str, Any]:
    """Versions and hardware, so every figure says where it was measured (versions from the installed
    packages' metadata: importing peft would load transformers' modeling code into a model-free rank 0)."""
    from importlib.metadata import version

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if device.type == "cuda" else []
    return {
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "python": platform.python_version(),
        "backend": backend or "none (simulation)",
        "world_size": world_size,
        "device": str(device),
        "device_names": names or [cpu_model()],
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads_rank0": threads,
        "layout": dataclasses.asdict(layout) if layout is not None else None,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    if value is None:
        return "-"
    return str(value)


class RateColumn(ProgressColumn):
    """Examples per second: measured by rich on the local-training bar, the last round's on the rounds bar."""

    def render(self, task: Any) -> Text:
        rate = task.fields.get("rate") if task.fields.get("rate") is not None else task.speed
        return Text(f"{rate:,.0f} ex/s" if rate else "", style="progress.data.speed")


class Reporter:
    """Rank 0's console and results file. `enabled=False` makes every call a no-op (other ranks)."""

    def __init__(
        self,
        results_path: Path | None,
        enabled: bool = True,
        console: Console | None = None,
        columns: Sequence[str] = COLUMNS,
    ):
        self.path = results_path
        self.columns = round_columns(columns)
        self.enabled = enabled
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self.progress: Progress | None = None
        self._round_task = self._step_task = None
        self.doc: dict[str, Any] = {}

    # ---- lines and tables --------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False) if self.live else print(message, flush=True)

    def partition_table(self, shards: Sequence[Sequence[int]], labels: Sequence[int] | None, public: int) -> None:
        """Per-client examples, and the label histogram when the task has labels (indexed like the shards)."""
        if not self.enabled:
            return
        classes = sorted(set(labels)) if labels is not None else []
        table = Table(title="clients", caption=f"public slice: {public} examples, kept out of every client")
        table.add_column("client")
        table.add_column("examples", justify="right")
        for c in classes:
            table.add_column(f"label {c}", justify="right")
        for i, shard in enumerate(shards):
            hist = Counter(labels[j] for j in shard) if labels is not None else Counter()
            table.add_row(str(i), str(len(shard)), *(str(hist.get(c, 0)) for c in classes))
        self.console.print(table) if self.live else self._plain_table(table)

    def _plain_table(self, table: Table) -> None:
        Console(width=200, force_terminal=False, no_color=True).print(table)

    # ---- progress ----------------------------------------------------------------------------
    def start(self, rounds: int) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),  # for the rounds bar: an estimate of the time left for the run
            console=self.console,
        )
        self.progress.start()
        self._round_task = self.progress.add_task("rounds", total=rounds, rate=None)
        self._step_task = self.progress.add_task("local examples", total=None, visible=False, rate=None)
        self._done, self._round_rows, self._seen = 0, 0, 0  # rounds finished; this round's rows, and seen

    def round_started(self, round_idx: int, local_examples: int | None) -> None:
        """local_examples: examples this process will train on this round (None when others train)."""
        if self.progress is not None and local_examples:
            self._round_rows, self._seen = local_examples, 0
            self.progress.reset(
                self._step_task, total=local_examples, visible=True, description=f"round {round_idx} local examples"
            )

    def step(self, examples: int = 1) -> None:
        """A local step's rows: the rounds bar moves with them too, so its time left shows from the first
        steps (scoring, which follows each round's training, is in its rate from round 2 on)."""
        if self.progress is not None:
            self.progress.advance(self._step_task, examples)
            self._seen += examples
            part = min(self._seen / self._round_rows, 0.99) if self._round_rows else 0.0
            self.progress.update(self._round_task, completed=self._done + part)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # ---- results -----------------------------------------------------------------------------
    def begin(self, config: dict[str, Any], env: dict[str, Any], extra: dict[str, Any]) -> None:
        self.doc = {"config": config, "env": env, **extra, "rounds": [], "elapsed_s": None, "status": "running"}

    def record(self, rec: dict[str, Any]) -> None:
        """Append one round's record, save results.json, print the round line."""
        if not self.enabled:
            return
        self.doc["rounds"].append(rec)
        self.save()
        if self.progress is not None and rec["round"] > 0:
            seen, busy = rec.get("examples_trained"), rec.get("time_train_s")
            rate = seen / busy if seen and busy else None
            self._done += 1
            self.progress.update(self._round_task, completed=self._done, rate=rate)
        parts = [f"{k}={_fmt(rec.get(k))}" for k in self.columns if k in rec and k != "round"]
        self.log(f"round {rec['round']}: " + "  ".join(parts))

    def save(self) -> None:
        if self.enabled and self.path is not None:
            atomic_write_json(self.path, self.doc)

    def finish(self, elapsed_s: float, status: str = "completed", reason: str | None = None) -> None:
        """Close the results document: completed, or interrupted / failed with the reason."""
        if not self.enabled or not self.doc:
            return
        self.stop()
        self.doc["elapsed_s"] = elapsed_s
        self.doc["status"] = status
        if reason is not None:
            self.doc["status_reason"] = reason
        self.save()
        if status != "completed":
            return
        table = Table(title=f"{self.doc['config'].get('scheme')} on {self.doc['config'].get('task')}")
        for col in self.columns:
            table.add_column(col, justify="right")
        for rec in self.doc["rounds"]:
            table.add_row(*(_fmt(rec.get(c)) for c in self.columns))
        self.console.print(table) if self.live else self._plain_table(table)
        self.log(f"done in {elapsed_s:.1f}s; results: {self.path}")


def begin_run(reporter: Reporter, cfg: Any, s: Any, payload: int, first_round: int) -> None:
    """The per-client table, the layout and a summary line; results.json begins (rank 0). `s` is the
    run's set-up (`fl.setup.Setup`), `payload` the bytes of one packed global state."""
    from fl.models import ServerModel, count_parameters
    from fl.models.precision import resolve_precision

    rt = s.rt
    precision = resolve_precision(cfg.precision, rt.device)
    how = f"{precision} (precision=auto on {rt.device})" if cfg.precision == "auto" else precision
    reporter.partition_table(s.shards, s.task.partition_labels(range(len(s.task.train))), s.public_size)
    for line in rt.layout_lines if rt.is_main else []:
        reporter.log(f"layout: {line}")
    trainable, total = count_parameters(s.model)
    reporter.log(
        f"{cfg.scheme} on {cfg.task_name}: {len(s.task.train)} train ({s.public_size} public), "
        f"{len(s.task.test)} test; "
        f"model {s.model_path} ({trainable:,} of {total:,} parameters train, {payload:,} bytes travel); "
        f"{rt.world_size} process(es), device {rt.device}, {how}"
    )
    if s.resumed_from:
        reporter.log(f"resuming at round {first_round} from {s.resumed_from}")
    env = environment(rt.backend, rt.world_size, rt.device, rt.num_threads, rt.layout)
    env["client_groups"] = s.placement.client_groups() if rt.distributed else None
    env["precision_rank0"] = precision  # what rank 0 computes in (precision=auto resolves per device)
    env["rank0_model"] = "trainable state only" if isinstance(s.model, ServerModel) else "model"  # fl.setup
    reporter.begin(
        cfg.to_dict(),
        env,
        {
            "model_path": s.model_path,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "payload_bytes": payload,
            "public_examples": s.public_size,
            "client_examples": [len(x) for x in s.shards],
            "test_examples": len(s.task.test),
            "resumed_from": s.resumed_from,
            "data_notes": getattr(s.task, "notes", {}),
        },
    )
    if any((getattr(s.task, "notes", {}).get("skipped_rows") or {}).values()):
        reporter.log(f"rows left out (prompt longer than max_length): {s.task.notes['skipped_rows']}")


def rank_timings(scalars: dict[str, float], ranks: range, timed: bool, wait_s: float) -> dict[str, Any]:
    """A round's time keys from the client ranks' reduced timings (`rank<k>.train_s`, `.examples`):
    the slowest rank's training, the idle share (slowest minus mean), rank 0's wait, rows per rank.
    Round 0 (`timed` False) trained nothing."""
    busy = [scalars[f"rank{k}.train_s"] for k in ranks]
    return {
        "time_train_s": max(busy) if timed else 0.0,
        "time_idle_s": max(busy) - sum(busy) / len(busy) if timed else 0.0,
        "time_wait_s": wait_s,
        "examples_per_rank": {str(k): int(scalars[f"rank{k}.examples"]) for k in ranks},
    }
