"""Where a job's memory sits: run a command, sample the PSS of every process of its tree (anonymous
and file-backed apart), print each process's share at the moment the tree peaks.

    python -m bench.tree_memory -- python -m torch.distributed.run --standalone --nproc_per_node=3 \\
        -m fl run recipes/fedlora.yaml precision=fp32 task=sst2 data_dir=../shared/data/glue ...
    python -m bench.tree_memory --json out.json -- CMD...   # also the whole timeline, per process

A process is named by its torchrun RANK (or "launcher" without one) and its command line. The
figures behind bench/reports/startup.md were taken this way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import _children

FIELDS = ("Pss", "Pss_Anon", "Pss_File")


def rollup(pid: int) -> dict[str, int]:
    """PSS of one process, in bytes, by kind ({} once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in lines) if k in FIELDS}


def name(pid: int) -> str:
    """'RANK=1 python -m fl run ...' for a torchrun rank, 'launcher ...' for anything else."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    rank = next((e.decode() for e in env if e.startswith(b"RANK=")), "launcher")
    return f"{rank} {cmd[:60]}"


def tree(pid: int) -> list[int]:
    kids, todo, out = _children(), [pid], []
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def sample(cmd: list[str], interval_s: float = 0.25) -> dict[str, Any]:
    """Run `cmd` to the end; its wall time, exit code and a timeline of per-process PSS by kind."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timeline: list[tuple[float, dict[int, dict[str, int]]]] = []
    names: dict[int, str] = {}

    def watch() -> None:
        while proc.poll() is None:
            row = {p: rollup(p) for p in tree(proc.pid)}
            for p in row:
                names.setdefault(p, name(p))
            timeline.append((time.perf_counter() - t0, row))
            time.sleep(interval_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    watcher.join()
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "stderr_tail": err[-2000:],
        "names": names,
        "timeline": timeline,
    }


def at_peak(doc: dict[str, Any]) -> tuple[float, dict[str, dict[str, int]]]:
    """(seconds into the run, process name -> PSS by kind) when the tree's total PSS was largest."""
    t, row = max(doc["timeline"], key=lambda tr: sum(v.get("Pss", 0) for v in tr[1].values()))
    return t, {doc["names"][p]: v for p, v in row.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.tree_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the timeline here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command to measure after --")
    doc = sample(cmd)
    t, row = at_peak(doc)
    mib = 2**20
    print(
        f"wall {doc['wall_s']:.1f} s, exit {doc['returncode']}; tree peak at {t:.1f} s: "
        f"{sum(v.get('Pss', 0) for v in row.values()) / mib:,.0f} MiB"
    )
    for n, v in sorted(row.items()):
        print(
            f"  {n}: {v.get('Pss', 0) / mib:,.0f} MiB (anon {v.get('Pss_Anon', 0) / mib:,.0f}, "
            f"file {v.get('Pss_File', 0) / mib:,.0f})"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({**doc, "timeline": [(t, {str(p): v for p, v in r.items()}) for t, r in doc["timeline"]]})
        )
    return doc


if __name__ == "__main__":
    sys.exit(0 if main()["returncode"] == 0 else 1)
