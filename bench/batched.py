"""Batched client training (`parallel_clients=K`) against the sequential path and against a plain
loop at the same total batch (the ceiling: one adapter, K x B rows per step), for K = 1, 4, 16, 64
clients of a round on one device. Client training examples/s and peak memory, each measured in a
fresh process. Writes bench/reports/batched.{md,json}.

    python -m bench.batched                  # MiniLM-L6 + LoRA r8, Rotten Tomatoes rows, this device
    python -m bench.batched --quick          # tiny sizes: checks the benchmark runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import add_common_args, md_table, write_report

ROOT = Path(__file__).resolve().parents[1]


def measure(way: str, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh process (its own peak memory): examples/s of one round's training."""
    cmd = [
        sys.executable,
        "-m",
        "bench.batched",
        "--one",
        way,
        str(k),
        "--model",
        args.model,
        "--rows",
        str(args.rows),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def one(way: str, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """Child process: build the clients, train one round `way` (sequential | batched | plain), report."""
    import resource
    import time

    import torch

    from fl import comm, models
    from fl.config.recipe import load_config
    from fl.setup import prepare

    over = [
        "precision=fp32",
        "group_by_length=false",
        f"model={args.model}",
        f"num_clients={k}",
        f"max_train_samples={k * args.rows}",
        "teacher_data_pct=0",
        "max_eval_samples=8",
        "lora_dropout=0",
        f"batch_size={args.batch_size}",
        f"device={args.device}",
        f"parallel_clients={k if way == 'batched' else 1}",
        "aggregation_error=false",
    ]
    s = prepare(load_config(ROOT / "recipes" / "fedlora.yaml", over), comm.Runtime(device=torch.device(args.device)))
    glob = models.snapshot(models.get_trainable_state(s.model))
    plan = s.strategy.plan_round(1)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if way == "plain":  # one adapter over the K clients' rows together, K x B rows a step: the ceiling
        from fl.client.train import LocalSchedule, train_local

        data = s.task.encode(s.tokenizer, s.task.train)
        sched = LocalSchedule(2e-3, 1, args.batch_size * k)
        train_local(s.model, s.task, data.subset(range(sched.batch_size)), sched, seed=0, device=s.rt.device)
        sync()
        t0 = time.perf_counter()
        res = train_local(s.model, s.task, data, sched, seed=1, device=s.rt.device)
        sync()
        seconds, seen = time.perf_counter() - t0, res.examples_seen
    else:
        list(s.runner.train(plan, glob))  # warm-up (allocator, kernels)
        sync()
        t0 = time.perf_counter()
        seen = sum(u.seen for u in s.runner.train(plan, glob))
        sync()
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    return {
        "way": way,
        "k": k,
        "examples": seen,
        "seconds": seconds,
        "examples_per_s": seen / seconds,
        "peak_rss_mib": peak,
        "peak_gpu_mib": gpu,
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.batched", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--rows", type=int, default=32, help="training rows per client (2 steps of 16)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", nargs=2, metavar=("WAY", "K"), help=argparse.SUPPRESS)
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return Path()
    if args.quick:
        args.ks, args.rows = [2], 16  # one K: three child processes, each a full import of torch and fl
    results = {f"{way}-{k}": measure(way, k, args) for k in args.ks for way in ("sequential", "batched", "plain")}
    return render(args, results, Path(args.out), argv)


def render(args: argparse.Namespace, results: dict[str, Any], out: Path, argv: list[str] | None) -> Path:
    name = f"batched{'-quick' if args.quick else ''}"
    rows = []
    for k in args.ks:
        seq, bat, plain = (results[f"{w}-{k}"] for w in ("sequential", "batched", "plain"))
        rows.append(
            [
                k,
                seq["examples_per_s"],
                bat["examples_per_s"],
                plain["examples_per_s"],
                bat["examples_per_s"] / seq["examples_per_s"],
                bat["examples_per_s"] / plain["examples_per_s"],
                seq["peak_rss_mib"],
                bat["peak_rss_mib"],
            ]
        )
    body = (
        f"{args.model} + LoRA r8 (q/v) and the head, {args.rows} Rotten Tomatoes rows per client, batch "
        f"{args.batch_size} per client, fp32, device {args.device}; one round of K clients' local training "
        "after a warm-up round, each way in a fresh process. sequential: fl's runner, one client after "
        "another; batched: `parallel_clients=K`; plain: one adapter trained by fl's loop on K x B rows a step "
        "(the same total batch: the ceiling batching can reach).\n\n"
        + md_table(
            [
                "K",
                "sequential ex/s",
                "batched ex/s",
                "plain ex/s (ceiling)",
                "batched / sequential",
                "batched / ceiling",
                "sequential peak RSS MiB",
                "batched peak RSS MiB",
            ],
            rows,
        )
    )
    path = write_report("bench.batched", name, "Batched client training", body, results, out, argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
