"""Peer comparison: the same FedLoRA workload run by Flower's simulation engine and by fl, each in
its own process tree, one after the other on the same cores: seconds per round, total wall time
(start-up and teardown included), peak memory of the whole process tree, final accuracy.

Workload (both sides): MiniLM-L6 + LoRA r8 on query/value + head, SST-2, 4 clients x 500 examples
(the same contiguous shards fl builds, after its 20% public slice), batch 16, max length 64,
1 local epoch, lr 2e-3, 3 rounds, seed 42, the global model scored on the 872 dev sentences
before round 1 and after every round.

    pip install -e ".[peer]"                       # Flower with its simulation engine (Ray)
    python -m bench.peer                           # Flower, fl in one process, fl under torchrun
    python -m bench.peer --quick                   # seconds: checks the benchmark runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    GLUE,
    RUNS,
    add_common_args,
    md_table,
    measure,
    run_torchrun,
    sst2_shards,
    write_report,
)

STARTUP_KEYS = ("imports_s", "process_group_s", "data_s", "model_s", "tokenize_s", "strategy_s", "setup_s", "start_s")


def flower_run(spec: dict[str, Any]) -> dict[str, Any]:
    """bench.flower_app in a fresh Python; its per-round log plus wall time and peak tree PSS."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        code = "from bench.flower_app import main; main()"
        proc, wall, peak = measure([sys.executable, "-c", code, str(spec_path), str(out_path)])
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"Flower run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        doc = json.loads(out_path.read_text())
    doc["wall_s"], doc["peak_tree_pss_bytes"] = wall, peak
    return doc


def plain_run(spec: dict[str, Any], workers: int) -> dict[str, Any]:
    """bench.plain's loop (`workers` 1-thread worker processes) in a fresh Python: its rounds, wall, peak tree PSS."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "workers": workers}))
        code = (
            "import json, sys; from bench.plain import run_loop; s = json.load(open(sys.argv[1])); "
            "rows = lambda xs: [tuple(x) for x in xs]; "
            "out = run_loop(s['model_path'], [rows(x) for x in s['shards']], rows(s['test']), rounds=s['rounds'], "
            "lr=s['lr'], lora=s.get('lora', True), workers=s['workers'], seed=s['seed']); "
            "json.dump(out, open(sys.argv[2], 'w'))"
        )
        proc, wall, peak = measure([sys.executable, "-c", code, str(spec_path), str(out_path)])
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"plain loop failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rounds = json.loads(out_path.read_text())
    return {"rounds": rounds, "wall_s": wall, "peak_tree_pss_bytes": peak}  # round 0 first, like the others


def summary(label: str, rounds: list[dict[str, Any]], wall: float, peak: int, acc_key: str) -> dict[str, Any]:
    per_round = [r["time_s"] for r in rounds[1:]]
    steady = per_round[1:] or per_round  # after round 1, which also pays lazy start-up (Flower's actors)
    return {
        "label": label,
        "round_s": sum(per_round) / len(per_round),
        "steady_round_s": sum(steady) / len(steady),
        "rounds_s": per_round,
        "eval_s": sum(r["time_eval_s"] for r in rounds[1:]) / len(per_round),
        "wall_s": wall,
        "peak_gib": peak / 2**30,
        "final_accuracy": rounds[-1][acc_key],
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE), help="GLUE folder (SST-2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=500)
    ap.add_argument("--fl-procs", default="1,3", help="fl variants: 1 = one process, N > 1 = torchrun N procs")
    add_common_args(
        ap,
        model_help="model of both sides ('embedded' = MiniLM-L6)",
        quick_help="seconds: 1 round, 8 examples per client, 16 test rows",
    )
    args = ap.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        ap.error("Flower is not installed; install the peer extra: pip install -e '.[peer]'")
    max_eval = None
    if args.quick:
        args.rounds, args.per_client, max_eval = 1, 8, 16

    from fl.models import resolve_model

    n_train, shards, test = sst2_shards(args.data_dir, args.clients, args.per_client, max_eval)
    cores = len(os.sched_getaffinity(0))
    spec = {
        "model_path": resolve_model(args.model),
        "shards": shards,
        "test": test,
        "rounds": args.rounds,
        "lr": 2e-3,
        "seed": 42,
        "cores": cores,
        "cpus_per_client": 1,
    }
    from importlib.metadata import version

    flower_label = f"Flower {version('flwr')} simulation (Ray {version('ray')}, 1 CPU per client)"
    results = [summary(flower_label, *_flower(spec), "accuracy")]
    base = plain_run(spec, workers=2)
    plain_label = "plain transformers+peft loop, 2 worker processes x 1 thread"
    results.append(summary(plain_label, base["rounds"], base["wall_s"], base["peak_tree_pss_bytes"], "test_accuracy"))

    runs = RUNS / f"peer{'-quick' if args.quick else ''}"
    common = [
        "scheme=fedlora",
        "task=sst2",
        f"data_dir={args.data_dir}",
        f"max_train_samples={n_train}",
        f"num_clients={args.clients}",
        f"rounds={args.rounds}",
        "lr=2e-3",
        f"model={args.model}",
        "seed=42",
        "partition=contiguous",
        f"output_dir={runs}",
        "save_model=false",
        "overwrite=true",  # bench/runs/ is the benchmark's own: a rerun replaces it
        "checkpoint_every=0",
    ] + ([f"max_eval_samples={max_eval}"] if max_eval else [])
    docs = {}
    for nproc in (int(x) for x in args.fl_procs.split(",")):
        name = f"fl-{nproc}proc"
        doc = run_torchrun("fedlora.yaml", [*common, f"run_name={name}"], nproc, runs / name)
        label = "fl, one process" if nproc == 1 else f"fl, torchrun {nproc} procs (rank 0 + {nproc - 1} client ranks)"
        docs[label] = doc
        results.append(summary(label, doc["rounds"], doc["wall_s"], doc["peak_tree_pss_bytes"], "test_accuracy"))

    flower, plain_loop = results[0], results[1]
    fl_runs = results[2:]
    best = next((r for r in fl_runs if "torchrun" in r["label"]), fl_runs[0])
    rows = [
        [r["label"], r["round_s"], r["steady_round_s"], r["eval_s"], r["wall_s"], r["peak_gib"], r["final_accuracy"]]
        for r in results
    ]
    ratios = {
        "round": best["round_s"] / flower["round_s"],
        "round_after_first": best["steady_round_s"] / flower["steady_round_s"],
        "total": best["wall_s"] / flower["wall_s"],
        "peak_memory": best["peak_gib"] / flower["peak_gib"],
        "round_vs_plain": best["round_s"] / plain_loop["round_s"],
        "total_vs_plain": best["wall_s"] / plain_loop["wall_s"],
        "memory_vs_plain": best["peak_gib"] / plain_loop["peak_gib"],
    }
    startup = {label: doc.get("startup_per_rank") for label, doc in docs.items()}
    body = (
        f"Workload: FedLoRA, SST-2, {args.clients} clients x {args.per_client} examples (same shards on both sides), "
        f"batch 16, max length 64, 1 local epoch, lr 2e-3, {args.rounds} rounds, seed 42, server-side scoring of "
        f"{len(test)} dev sentences before round 1 and after each round (all three; the plain loop scores "
        "round 0 since 2026-12-07, before which its total wall held one scoring less than the others'). "
        "Flower's clients run `bench.plain`'s training (the no-framework loop); fl runs its own. Each side "
        "runs alone, in its own process tree; peak memory is the largest sum of PSS over every process of "
        "the tree (sampled every 0.25 s). What differs: Flower and the plain loop score on their server "
        "process in the dev set's own row order (batches padded to their longest row as they come), while fl "
        "splits the scoring over its client ranks and sorts rows by length; the 'of which scoring' column "
        "shows what that costs each side.\n\n"
        + md_table(
            [
                "run",
                "s / round",
                "s / round after round 1",
                "of which scoring",
                "total wall s",
                "peak memory GiB",
                "final acc",
            ],
            rows,
        )
        + f"\n{best['label']} against Flower and against the plain loop, from this one run:\n\n"
        + md_table(
            ["ratio", "value", "target"],
            [
                ["fl / Flower, seconds per round", ratios["round"], "<= 0.9"],
                ["fl / Flower, seconds per round after round 1", ratios["round_after_first"], "<= 0.9"],
                ["fl / Flower, total wall time", ratios["total"], "<= 0.9"],
                ["fl / Flower, peak memory", ratios["peak_memory"], "<= 0.7"],
                ["fl / plain loop, seconds per round", ratios["round_vs_plain"], "<= 0.98"],
                ["fl / plain loop, total wall time", ratios["total_vs_plain"], "<= 0.95"],
                ["fl / plain loop, peak memory", ratios["memory_vs_plain"], "-"],
            ],
        )
        + "\nfl's start-up per rank (seconds, from results.json `startup_per_rank`; imports_s: from the "
        "process's start to fl's run, with every import):\n\n"
        + md_table(
            ["run", "rank", *STARTUP_KEYS],
            [
                [label, i, *[t.get(k) for k in STARTUP_KEYS]]
                for label, ts in startup.items()
                for i, t in enumerate(ts or [])
            ],
        )
    )
    name = f"peer{'-quick' if args.quick else ''}"
    data = {"results": results, "ratios": ratios, "fl_best": best["label"], "startup": startup}
    path = write_report("bench.peer", name, "Peer comparison: fl against Flower", body, data, Path(args.out), argv=argv)
    print(path.read_text())
    return path


def _flower(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], float, int]:
    doc = flower_run(spec)
    return doc["rounds"], doc["wall_s"], doc["peak_tree_pss_bytes"]


if __name__ == "__main__":
    main()
