"""Shared by the benchmarks: the machine record, fl runs in-process or under torchrun, report files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fl.config import load_config
from fl.report import atomic_write_json, cpu_model

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


def command_line(module: str) -> str:
    """The exact command that produced a report."""
    return " ".join(["python -m", module, *(shlex.quote(a) for a in sys.argv[1:])])


def run_inprocess(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """One fl job in this process (simulation path); returns its results document."""
    from fl.server import run

    t0 = time.perf_counter()
    doc = run(load_config(RECIPES / recipe, overrides))
    doc["wall_s"] = time.perf_counter() - t0
    return doc


def run_torchrun(recipe: str, overrides: list[str], nproc: int, run_dir: Path) -> dict[str, Any]:
    """One fl job under torchrun; returns its results document (wall time includes start-up)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "fl",
        "run",
        str(RECIPES / recipe),
        *overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith(("error", "[rank"))]
        raise RuntimeError(f"torchrun failed ({proc.returncode}): " + "\n".join(errors[-20:] or [proc.stderr[-2000:]]))
    doc = json.loads((run_dir / "results.json").read_text())
    doc["wall_s"] = wall
    return doc


def write_report(
    module: str, name: str, title: str, body_md: str, data: dict[str, Any], out_dir: Path = REPORTS
) -> Path:
    """<name>.md and <name>.json under out_dir, both naming the machine and the command."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "machine": machine(),
        "command": command_line(module),
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
