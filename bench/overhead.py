"""Framework overhead: an fl round against the same local training done by a plain loop with no
framework (transformers + peft + torch only), measured in one run on the same cores; and where an
fl round's time goes (client training, communication, aggregation, evaluation, the rest).

Reference workload: MiniLM-L6 + LoRA r8 (FedLoRA) or all weights (FedAvg), 4 clients x 500 SST-2
examples, batch 16, max length 64, 1 local epoch, 3 rounds, evaluation on the 872 dev sentences.

    python -m bench.overhead              # both schemes: plain loop with 2 workers vs fl under torchrun (3 procs)
    python -m bench.overhead --all        # also both in one process
    python -m bench.overhead --quick      # seconds: checks the benchmark runs
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import GLUE, RUNS, add_common_args, md_table, run_torchrun, sst2_shards, write_report
from bench.peer import plain_run

# the consecutive parts of a round on rank 0's clock (time_idle_s runs alongside training, on other ranks):
# training (rank 0 waits in a barrier for the slowest client rank under torchrun; it trains itself in one
# process), the collectives (measured after the barriers), aggregation, server KD, scoring
PARTS = ("time_comm_s", "time_aggregate_s", "time_server_kd_s", "time_eval_s")


def breakdown(rec: dict[str, Any]) -> list[float]:
    """time_s, training, the other parts, what is left (bookkeeping), the client ranks' mean idle time."""
    train = rec.get("time_wait_s") or rec.get("time_train_s", 0.0)
    parts = [train, *(rec.get(k, 0.0) for k in PARTS)]
    return [rec["time_s"], *parts, rec["time_s"] - sum(parts), rec.get("time_idle_s", 0.0)]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE), help="GLUE folder (SST-2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-client", type=int, default=500)
    ap.add_argument("--schemes", default="fedlora,fedavg")
    ap.add_argument(
        "--workers", type=int, default=2, help="client processes: the plain loop's workers, fl's client ranks"
    )
    ap.add_argument("--all", action="store_true", help="also both in one process (about twice as long)")
    add_common_args(
        ap,
        model_help="model for both loops ('embedded' = MiniLM-L6)",
        quick_help="seconds: 1 round, 8 examples per client, 16 test rows",
    )
    args = ap.parse_args(argv)
    clients, max_eval = 4, None
    if args.quick:
        args.rounds, args.per_client, max_eval = 1, 8, 16

    from fl.models import resolve_model

    n_train, shards, test = sst2_shards(args.data_dir, clients, args.per_client, max_eval)
    model_path = resolve_model(args.model)
    runs = RUNS / f"overhead{'-quick' if args.quick else ''}"
    pairs = [(args.workers, args.workers + 1)] + ([(0, 1)] if args.all else [])  # (plain workers, fl processes)
    rows, breakdown_rows, data = [], [], {}
    for scheme in args.schemes.split(","):
        lr = 5e-5 if scheme == "fedavg" else 2e-3
        common = [
            f"scheme={scheme}",
            "task=sst2",
            f"data_dir={args.data_dir}",
            f"max_train_samples={n_train}",
            f"num_clients={clients}",
            f"rounds={args.rounds}",
            f"lr={lr}",
            f"model={args.model}",
            "seed=42",
            f"output_dir={runs}",
            "save_model=false",
            "overwrite=true",  # bench/runs/ is the benchmark's own: a rerun replaces it
            "checkpoint_every=0",
            "partition=contiguous",
        ] + ([f"max_eval_samples={max_eval}"] if max_eval else [])
        for workers, nproc in pairs:
            spec = {
                "model_path": model_path,
                "shards": shards,
                "test": test,
                "rounds": args.rounds,
                "lr": lr,
                "seed": 42,
                "lora": scheme == "fedlora",
            }
            plain_doc = plain_run(spec, workers)  # its own process tree: wall and peak memory like fl's
            base = plain_doc["rounds"][1:]
            name = f"{scheme}-{nproc}proc"
            doc = run_torchrun("fedlora.yaml", [*common, f"run_name={name}"], nproc, runs / name)
            plain_label = f"{workers} worker processes x 1 thread" if workers else "one process"
            fl_label = f"torchrun {nproc} procs (rank 0 + {nproc - 1} client ranks)" if nproc > 1 else "one process"
            plain_round = sum(r["time_s"] for r in base) / len(base)
            fl_rounds = doc["rounds"][1:]
            fl_round = sum(r["time_s"] for r in fl_rounds) / len(fl_rounds)
            rows.append(
                [
                    scheme,
                    plain_label,
                    fl_label,
                    plain_round,
                    fl_round,
                    fl_round / plain_round,
                    plain_doc["wall_s"],
                    doc["wall_s"],
                    doc["wall_s"] - sum(r["time_s"] for r in fl_rounds),
                    plain_doc["peak_tree_pss_bytes"] / 2**30,
                    doc["peak_tree_pss_bytes"] / 2**30,
                    base[-1]["test_accuracy"],
                    doc["rounds"][-1]["test_accuracy"],
                ]
            )
            mean = [sum(col) / len(fl_rounds) for col in zip(*(breakdown(r) for r in fl_rounds), strict=True)]
            breakdown_rows.append([scheme, fl_label, *mean])
            data[f"{scheme}/{fl_label}"] = {
                "plain": base,
                "plain_variant": plain_label,
                "fl": doc["rounds"],
                "ratio": fl_round / plain_round,
                "plain_wall_s": plain_doc["wall_s"],
                "fl_wall_s": doc["wall_s"],
                "plain_peak_tree_pss_bytes": plain_doc["peak_tree_pss_bytes"],
                "fl_peak_tree_pss_bytes": doc["peak_tree_pss_bytes"],
                "fl_startup_per_rank": doc.get("startup_per_rank"),
            }
    body = (
        f"Workload: SST-2, {clients} clients x {args.per_client} examples (the same contiguous shards on both sides), "
        f"batch 16, max length 64, 1 local epoch, {args.rounds} rounds, scoring of {len(test)} dev sentences before "
        "round 1 and after every round (the plain loop scores round 0 since 2026-12-07, in its wall time). "
        "Plain loop: `bench/plain.py`, transformers + peft + torch only, the same optimizer (AdamW, "
        "weight decay 0) and learning rate; with worker processes, a torch multiprocessing pool trains the clients "
        "(1 thread each) and the main process averages and scores the dev set in its own row order; fl scores it "
        "split over its client ranks with rows sorted by length. Each pair is measured back to back in one run, each "
        "side in its own process tree: total wall includes start-up and shutdown, peak memory is the largest sum of "
        "PSS over the tree's processes (torchrun's agent included).\n\n"
        + md_table(
            [
                "scheme",
                "plain loop",
                "fl",
                "plain s / round",
                "fl s / round",
                "ratio fl / plain",
                "plain total wall s",
                "fl total wall s",
                "fl wall minus rounds",
                "plain peak GiB",
                "fl peak GiB",
                "plain final acc",
                "fl final acc",
            ],
            rows,
        )
        + "\nWhere an fl round goes (mean seconds per round, on rank 0's clock: under torchrun it waits in a barrier "
        "while the client ranks train, so client training is the slowest client rank's and every collective is timed "
        "after its barrier; the last column is how long the other client ranks wait for the slowest, on average):\n\n"
        + md_table(
            [
                "scheme",
                "fl",
                "round",
                "client training",
                "communication",
                "aggregation",
                "server KD",
                "evaluation",
                "rest (bookkeeping)",
                "client ranks idle (during training)",
            ],
            breakdown_rows,
        )
    )
    name = f"overhead{'-quick' if args.quick else ''}"
    path = write_report("bench.overhead", name, "Framework overhead", body, data, Path(args.out), argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
