"""LoRA aggregation modes: fedit, ffa, fedex and flex (mixed ranks) against centralized LoRA, IID and
Dirichlet(0.3), on SST-2 and CoLA, over several seeds (mean and min-max: the differences between
modes are small, one seed cannot show them). Writes bench/reports/lora-aggregation.{md,json,png}.

Every run: 4 clients, MiniLM-L6 + LoRA (CoLA with the settings of recipes/cola-fedlora.yaml),
in one process (the simulation path: same numbers as torchrun, less start-up), small slices of
train and dev so that the whole grid fits 20 minutes on 2 cores.

    python -m bench.lora_aggregation
    python -m bench.lora_aggregation --quick        # tiny sizes, seconds: for tests
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.common import GLUE, RUNS, add_common_args, md_table, run_inprocess, write_report
from bench.schemes import task_lora_settings
from fl.output.plots import plot_rounds

MODES = [  # (label, overrides)
    ("fedit", ["lora_aggregation=fedit"]),
    ("ffa", ["lora_aggregation=ffa"]),
    ("fedex", ["lora_aggregation=fedex"]),
    ("flex (ranks 8,8,4,4)", ["lora_aggregation=flex", "lora_ranks=8,8,4,4", "lora_r=8"]),
]
CENTRAL = ("centralized LoRA", ["num_clients=1"])
SPLITS = {"iid": ["partition=iid"], "dirichlet 0.3": ["partition=dirichlet", "dirichlet_alpha=0.3"]}


def summary(docs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Per round: mean, min and max over the seeds."""
    rounds = len(docs[0]["rounds"])
    cols = [[d["rounds"][i].get(key) for d in docs] for i in range(rounds)]
    cols = [[v for v in c if v is not None] or [float("nan")] for c in cols]
    return [statistics.fmean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.lora_aggregation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE))
    ap.add_argument("--tasks", default="sst2,cola")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-train-samples", type=int, default=224, help="train rows per run (all to the clients)")
    ap.add_argument("--max-eval-samples", type=int, default=192)
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.rounds, args.max_train_samples, args.max_eval_samples = "sst2", "1", 1, 64, 32
    runs = RUNS / f"lora-aggregation{'-quick' if args.quick else ''}"
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in args.tasks.split(","):
        common = [
            f"task={task}",
            f"data_dir={args.data_dir}",
            f"model={args.model}",
            "num_clients=4",
            "teacher_data_pct=0",
            f"rounds={args.rounds}",
            f"max_train_samples={args.max_train_samples}",
            f"max_eval_samples={args.max_eval_samples}",
            f"output_dir={runs}",
            "save_model=false",
            "checkpoint_every=0",
            "overwrite=true",
            *task_lora_settings(task),
        ]
        if args.quick:
            common.append("max_length=32")
        grid = [
            (f"{task}, {split}, {label}", [*s_over, *over]) for split, s_over in SPLITS.items() for label, over in MODES
        ]
        grid.append((f"{task}, {CENTRAL[0]}", CENTRAL[1]))
        for key, over in grid:
            results[key] = []
            for seed in args.seeds.split(","):
                name = f"r{len(results)}-s{seed}"
                results[key].append(run_inprocess("fedlora.yaml", [*common, *over, f"seed={seed}", f"run_name={name}"]))
    return render(args, results, Path(args.out), argv)


def render(
    args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], out: Path, argv: list[str] | None
) -> Path:
    name = f"lora-aggregation{'-quick' if args.quick else ''}"
    rows, curves = [], []
    figures = []
    for task in args.tasks.split(","):
        metric = "test_mcc" if task == "cola" else "test_accuracy"
        keys = [k for k in results if k.startswith(f"{task},")]
        mean_runs, bands = {}, {}
        for key in keys:
            docs = results[key]
            mean, lo, hi = summary(docs, metric)
            err, _, _ = summary(docs, "aggregation_error")
            up, _, _ = summary(docs, "bytes_up")
            prod, _, _ = summary(docs, "bytes_products")
            label = key.split(", ", 1)[1]
            mean_runs[label] = [{"round": i, metric: m} for i, m in enumerate(mean)]
            bands[label] = (lo, hi)
            rows.append(
                [
                    task,
                    label,
                    metric.replace("test_", ""),
                    f"{mean[-1]:.4f}",
                    f"{lo[-1]:.4f} - {hi[-1]:.4f}",
                    err[-1] if len(err) > 1 else None,
                    round(up[-1]),
                    round(prod[-1]),
                ]
            )
            curves.append([task, label] + [f"{m:.3f}" for m in mean])
        fig = out / f"{name}-{task}.png"
        plot_rounds(
            mean_runs,
            [metric],
            fig,
            title=f"{task}: mean over seeds, min-max shaded",
            bands=bands,
            dashed=["centralized LoRA"],
        )
        figures.append(fig.name)
    body = (
        f"Each cell: {len(args.seeds.split(','))} seeds ({args.seeds}; the seed sets the split, initialisation and "
        f"order), {args.rounds} rounds, 4 clients, first {args.max_train_samples} train rows, first "
        f"{args.max_eval_samples} dev rows, MiniLM-L6 + LoRA r8 (flex: ranks 8,8,4,4 under a rank-8 global adapter), "
        "one process per run (the simulation path: the same numbers as torchrun). CoLA runs take the settings of "
        "recipes/cola-fedlora.yaml. Aggregation error: ||mean(s B_i A_i) - s B A||_F / ||mean(s B_i A_i)||_F after "
        "the last round, mean over seeds (0 means exact; fedex counts its folded residual). Bytes: what a deployment "
        "moves up per round (flex clients send their own rank; ffa only B), and the products' wire cost.\n\n"
        + md_table(
            [
                "task",
                "run",
                "metric",
                "final (mean)",
                "final (min - max)",
                "aggregation error",
                "bytes up / round",
                "products bytes / round",
            ],
            rows,
        )
        + "\nMean metric per round (round 0: before training):\n\n"
        + md_table(["task", "run"] + [f"{i}" for i in range(args.rounds + 1)], curves)
        + "".join(f"\n![{f}]({f})\n" for f in figures)
    )
    data = {
        "results": {k: [{"rounds": d["rounds"], "elapsed_s": d["elapsed_s"]} for d in v] for k, v in results.items()}
    }
    path = write_report("bench.lora_aggregation", name, "LoRA aggregation modes", body, data, out, argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
