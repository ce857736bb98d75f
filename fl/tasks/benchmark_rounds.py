"""Benchmark scores inside a federated run (`eval_benchmarks=mmlu,arc_easy,...`): after each round
(round 0 too) the global model is scored on a fixed, seeded sample of each benchmark's rows by
log-likelihood multiple choice (`fl.tasks.choices`, lm-evaluation-harness's `acc` / `acc_norm`).

The rows split over the client ranks as the test rows do (`Placement.eval_rows`); each rank adds its
counts to the task's metric sums, so the evaluation's one reduce brings them to rank 0, and a
round's scores are the same in one process and under torchrun (in fp32; under bf16 autocast the
batches pad differently in the two, which can flip a near-tie). The server scores them beside the
task's own metrics, so any causal-LM task (also your own) gets them, and a KD teacher's evaluation
does not. The sample's seed is fixed (0), not
the run's, so that runs with different seeds are scored on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fl.comm.message import Message
from fl.data.benchmarks import BENCHMARKS, SOURCES, Choice, load_benchmark
from fl.errors import ConfigError
from fl.models.precision import autocast
from fl.tasks.metrics import interval

ROWS_SEED = 0  # the same rows for every run (see the module docstring)
BATCH = 8  # items a pass; more is slower on CPUs (the choices' logits, [rows, length, vocabulary], grow with it)
COUNTS = ("n", "hits", "hits_norm")  # the sums each benchmark adds: rows scored, acc's and acc_norm's hits


def parse_names(text: str) -> tuple[str, ...]:
    """`"mmlu, arc_easy"` -> ("mmlu", "arc_easy"); an unknown or repeated name is one line."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ConfigError("eval_benchmarks is empty; name one or more of " + ", ".join(SOURCES))
    for n in names:
        if n in BENCHMARKS and n not in SOURCES:
            raise ConfigError(
                f"eval_benchmarks: {n} is scored by what the model generates, which `fl eval` does after a run; "
                f"each round takes the log-likelihood ones: {', '.join(SOURCES)}"
            )
        if n not in SOURCES:
            raise ConfigError(f"eval_benchmarks: unknown benchmark {n!r}; choose from {', '.join(SOURCES)}")
    if len(set(names)) < len(names):
        raise ConfigError(f"eval_benchmarks names a benchmark twice ({text}); name each once")
    return names


@dataclass
class BenchmarkRounds:
    """The benchmarks a run scores each round, and the items this rank scores of each (none on a
    rank that scores none, e.g. a torchrun job's rank 0)."""

    names: tuple[str, ...] = ()
    items: dict[str, list[Choice]] = field(default_factory=dict)
    precision: str = "fp32"  # autocast as the task's evaluation does

    @classmethod
    def from_config(cls, cfg: Any, rows_of: Callable[[int], Sequence[int]]) -> BenchmarkRounds:
        """The run's benchmarks (none when `eval_benchmarks` is unset) with the items of this rank:
        `rows_of(n)` gives its indices among n rows. Raises ConfigError for an unknown benchmark, rows
        that are not installed, more shots than dev rows."""
        if not cfg.eval_benchmarks:
            return cls()
        names = parse_names(cfg.eval_benchmarks)
        if cfg.eval_benchmark_shots and "mmlu" not in names:
            raise ConfigError("eval_benchmark_shots are mmlu's dev rows; add mmlu to eval_benchmarks or set it to 0")
        items = {}
        for b in names:
            every = load_benchmark(
                b, cfg.eval_benchmark_rows, ROWS_SEED, cfg.eval_benchmark_shots if b == "mmlu" else 0
            )
            items[b] = [every[i] for i in rows_of(len(every))]
        return cls(names, items, cfg.precision)

    def template(self) -> dict[str, float]:
        """Zeros of `sums`: every benchmark's counts, named, so ranks that score none reduce with the rest."""
        return {f"eval.bench.{b}.{c}": 0.0 for b in self.names for c in COUNTS}

    def add_sums(self, sums: Message, model: nn.Module, tokenizer: Any, device: torch.device) -> Message:
        """`sums` (the task's) with this rank's counts added: rows scored and the hits of acc and acc_norm."""
        from fl.tasks.choices import items_logprobs, pick

        out = self.template()
        if any(self.items.values()):
            model.eval()
            with autocast(device, self.precision):
                for b, items in self.items.items():
                    for item, logprobs in zip(
                        items, items_logprobs(model, tokenizer, items, device, BATCH), strict=True
                    ):
                        acc, norm = pick(logprobs, item.choices)
                        out[f"eval.bench.{b}.n"] += 1
                        out[f"eval.bench.{b}.hits"] += acc == item.gold
                        out[f"eval.bench.{b}.hits_norm"] += norm == item.gold
        return Message(sums.parts, {**sums.scalars, **out})

    def metrics(self, scalars: dict[str, float]) -> dict[str, float]:
        """`<benchmark>_acc`, `_acc_norm` with their 95% intervals, and `_n`, from the reduced counts."""
        out: dict[str, float] = {}
        for b in self.names:
            n = int(scalars[f"eval.bench.{b}.n"])
            for metric, count in (("acc", "hits"), ("acc_norm", "hits_norm")):
                hits = scalars[f"eval.bench.{b}.{count}"]
                out[f"{b}_{metric}"] = hits / n if n else float("nan")
                out[f"{b}_{metric}_ci95"] = interval(int(hits), n)
            out[f"{b}_n"] = float(n)
        return out
