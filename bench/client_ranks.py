"""Clients of one rank against clients of two ranks (`ranks_per_client`): the same client work
(2 clients, the same rows, batch and seeds) under torchrun with 1 + 2 x k processes, and what
DDP's gradient all-reduce costs on its own (gloo, 2 processes, the trainable tensors' size).
Writes bench/reports/client-ranks.{md,json}.

    python -m bench.client_ranks            # MiniLM-L6, Rotten Tomatoes rows, FedLoRA and FedAvg
    python -m bench.client_ranks --quick    # tiny sizes: checks the benchmark runs
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RUNS, add_common_args, md_table, run_torchrun, write_report


def allreduce_s(numel: int, repeats: int) -> float:
    """Median seconds of one gloo all-reduce of `numel` fp32 values between 2 processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the two processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, port, numel, repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return max(got)


def _allreduce_worker(rank: int, port: int, numel: int, repeats: int, queue: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    buf = torch.ones(numel)
    times = []
    for _ in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    queue.put(sorted(times[1:])[len(times[1:]) // 2])


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.client_ranks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1000, help="train rows before the 20%% public slice")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--schemes", default="fedlora,fedavg", help="comma-separated: fedlora, fedavg")
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 120, 1
    runs = RUNS / f"client-ranks{'-quick' if args.quick else ''}"
    common = [
        f"model={args.model}",
        "num_clients=2",
        f"rounds={args.rounds}",
        f"max_train_samples={args.rows}",
        "max_eval_samples=200",
        f"output_dir={runs}",
        "save_model=false",
        "overwrite=true",
        "checkpoint_every=0",
        "lora_dropout=0",
        "batch_size=16",
    ]
    if args.quick:
        common += ["max_length=32", "max_eval_samples=40"]
    results: dict[str, Any] = {}
    schemes = {"fedlora": [], "fedavg": ["scheme=fedavg", "lr=5e-5"]}
    for scheme, extra in ((s, schemes[s]) for s in args.schemes.split(",")):
        for k in (1, 2):
            name = f"{scheme}-k{k}"
            doc = run_torchrun(
                "fedlora.yaml", [*common, *extra, f"ranks_per_client={k}", f"run_name={name}"], 1 + 2 * k, runs / name
            )
            recs = doc["rounds"][1:]
            results[name] = {
                "round_s": sum(r["time_s"] for r in recs) / len(recs),
                "train_s": sum(r["time_train_s"] for r in recs) / len(recs),
                "final_test_accuracy": doc["rounds"][-1]["test_accuracy"],
                "trainable_parameters": doc["trainable_parameters"],
                "examples_per_rank": recs[-1]["examples_per_rank"],
                "wall_s": doc["wall_s"],
            }
    for scheme in args.schemes.split(","):
        n = results[f"{scheme}-k1"]["trainable_parameters"]
        results[f"{scheme}-allreduce_s"] = allreduce_s(n, 3 if args.quick else 20)
    return render(args, results, Path(args.out), argv)


def render(args: argparse.Namespace, results: dict[str, Any], out: Path, argv: list[str] | None) -> Path:
    name = f"client-ranks{'-quick' if args.quick else ''}"
    rows, schemes = [], [s for s in ("fedlora", "fedavg") if f"{s}-k1" in results]
    for scheme in schemes:
        for k in (1, 2):
            r = results[f"{scheme}-k{k}"]
            rows.append([scheme, k, 1 + 2 * k, r["round_s"], r["train_s"], r["final_test_accuracy"], r["wall_s"]])
    steps = -(-args.rows * 8 // 10 // 2 // 16)  # optimizer steps per client and round (batch 16)
    ar = [
        [
            s,
            results[f"{s}-k1"]["trainable_parameters"],
            results[f"{s}-allreduce_s"],
            results[f"{s}-allreduce_s"] * steps,
        ]
        for s in schemes
    ]
    body = (
        f"{args.model}, 2 clients x {args.rows * 8 // 10 // 2} Rotten Tomatoes rows, batch 16 (each of k ranks "
        f"takes 8 rows when k = 2), {args.rounds} rounds, lora_dropout 0, torchrun on this machine's cores: with "
        "k = 2 the 4 client ranks share them (each process gets cores / client ranks threads), so the "
        "CPU figures show the cost of splitting a client where there is no extra hardware, not a speed-up.\n\n"
        + md_table(
            ["scheme", "ranks per client", "processes", "s / round", "train s / round", "final accuracy", "wall s"],
            rows,
        )
        + "\nDDP's gradient all-reduce on its own (gloo, 2 processes, 1 thread each, median of repeats), and "
        f"what it adds per client and round at {steps} steps:\n\n"
        + md_table(["scheme", "trainable values", "one all-reduce s", "per client round s"], ar)
    )
    path = write_report("bench.client_ranks", name, "Clients of one and of two ranks", body, results, out, argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
