"""Scaling with the number of clients on a fixed number of client ranks (virtual clients), with a
fixed amount of data per client: seconds per round, peak memory per rank, bytes per round.

    python -m bench.scaling                          # 2..64 clients, 2 client ranks (torchrun, 3 procs)
    python -m bench.scaling --quick                  # seconds: checks the benchmark runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import RUNS, add_common_args, md_table, run_torchrun, write_report


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="2,4,8,16,32,64")
    ap.add_argument("--per-client", type=int, default=32, help="training examples per client")
    ap.add_argument("--client-ranks", type=int, default=2)
    add_common_args(ap, quick_help="seconds: 2 and 4 clients, 16 examples each")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.clients.split(",")]
    if args.quick:
        counts, args.per_client = [2, 4], 16
    runs = RUNS / f"scaling{'-quick' if args.quick else ''}"
    nproc = args.client_ranks + 1
    rows, data = [], {}
    for n in counts:
        over = [
            "scheme=fedlora",
            "task=rotten_tomatoes",
            f"model={args.model}",
            f"num_clients={n}",
            f"max_train_samples={n * args.per_client}",
            "teacher_data_pct=0",
            "rounds=1",
            "max_eval_samples=200",
            f"output_dir={runs}",
            f"run_name=clients-{n}",
            "save_model=false",
            "overwrite=true",  # bench/runs/ is the benchmark's own: a rerun replaces it
            "checkpoint_every=0",
            "seed=42",
        ]
        doc = run_torchrun("fedlora.yaml", over, nproc, runs / f"clients-{n}")
        rec = doc["rounds"][1]
        mem = [m["peak_rss_mib"] for m in doc["peak_memory_per_rank"]]
        gpu = [m.get("peak_gpu_mib") for m in doc["peak_memory_per_rank"]]
        rows.append(
            [
                n,
                rec["time_s"],
                rec["time_s"] / n,
                mem[0],
                max(mem[1:]),
                rec["bytes_up"],
                rec["bytes_down"],
                doc["wall_s"],
                doc["peak_tree_pss_bytes"] / 2**20,
            ]
            + ([max(g for g in gpu if g is not None)] if gpu[0] else [])
        )
        data[n] = {
            "round": rec,
            "peak_memory_per_rank": doc["peak_memory_per_rank"],
            "wall_s": doc["wall_s"],
            "peak_tree_pss_bytes": doc["peak_tree_pss_bytes"],
        }
    first, last = rows[0], rows[-1]
    per_client_mib = (last[4] - first[4]) / max(last[0] - first[0], 1)
    adapter_mib = doc["payload_bytes"] / 2**20
    headers = [
        "clients",
        "s / round",
        "s / round / client",
        "rank 0 peak RSS MiB",
        "client rank peak RSS MiB",
        "bytes up / round",
        "bytes down / round",
        "job wall s",
        "job peak PSS MiB",
    ]
    if len(rows[0]) > len(headers):
        headers.append("peak GPU MiB")
    body = (
        f"FedLoRA, MiniLM-L6, {args.per_client} Rotten Tomatoes examples per client, {args.client_ranks} client "
        f"ranks (torchrun, {nproc} processes), 1 round, 200 test rows. Per-rank peaks are each process's own "
        "peak RSS; the job's peak is the largest sum of PSS over every process of the job (torchrun's agent "
        "included), sampled every 0.25 s.\n\n"
        + md_table(headers, rows)
        + f"\nGrowth from {first[0]} to {last[0]} clients: time per round grows with the data trained "
        f"({last[1] / first[1]:.1f}x for {last[0] / first[0]:.0f}x the examples); client-rank peak memory grows "
        f"by {per_client_mib:.3f} MiB per extra client (one adapter is {adapter_mib:.3f} MiB; a model copy would be "
        f"~{doc['total_parameters'] * 4 / 2**20:.0f} MiB); bytes per round stay flat (the adapter once per "
        "client rank, whatever the number of clients it hosts, plus one 4-byte rejection flag per client).\n"
    )
    name = f"scaling{'-quick' if args.quick else ''}"
    path = write_report(
        "bench.scaling", name, "Scaling with virtual clients", body, {"runs": data}, Path(args.out), argv=argv
    )
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
