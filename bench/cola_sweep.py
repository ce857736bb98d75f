"""CoLA sweep: which learning rate, LoRA targets, rank and schedule let MiniLM + LoRA learn CoLA,
centralized (one client holding every client example) and then federated. Writes
bench/reports/cola-sweep.{md,json,png}; the recipe defaults come from it.

Staged, to fit a 2-core machine: stage 1 crosses learning rate with targets; stage 2 varies rank,
schedule and the head's learning rate around the best of stage 1; stage 3 runs the two best
settings federated (4 clients, torchrun with 2 client ranks), as cola-fedlora.yaml does.
Every run: CoLA from ../shared/data/glue, 20% public slice kept out (as the recipes), MCC on the
1,043 dev sentences after every epoch (= round), seed 42.

    python -m bench.cola_sweep
    python -m bench.cola_sweep --quick        # tiny sizes, seconds: for tests
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import GLUE, RUNS, add_common_args, md_table, run_inprocess, run_torchrun, write_report
from fl.output.plots import plot_rounds

STAGE1 = [  # (label, overrides): the pooler question first, then the learning rate
    ("lr 2e-3, query,value (the old recipe)", ["lr=2e-3"]),
    ("lr 2e-3, query,value + pooler trained whole", ["lr=2e-3", "lora_modules_to_save=pooler"]),
    ("lr 2e-3, all-linear (LoRA on the pooler too)", ["lr=2e-3", "lora_target_modules=all-linear"]),
    ("lr 5e-4, all-linear", ["lr=5e-4", "lora_target_modules=all-linear"]),
    ("lr 5e-3, query,value + pooler trained whole", ["lr=5e-3", "lora_modules_to_save=pooler"]),
    ("lr 5e-4, query,value + pooler trained whole", ["lr=5e-4", "lora_modules_to_save=pooler"]),
]


def stage2(best: list[str]) -> list[tuple[str, list[str]]]:
    return [
        ("best + r16 (alpha 32)", [*best, "lora_r=16", "lora_alpha=32"]),
        ("best + linear schedule, 10% warm-up", [*best, "lr_scheduler=linear", "warmup_ratio=0.1"]),
        ("best + head lr 5e-3", [*best, "head_lr=5e-3"]),
    ]


def final_mcc(doc: dict[str, Any]) -> float:
    return doc["rounds"][-1]["test_mcc"]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.cola_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE))
    ap.add_argument("--epochs", type=int, default=2, help="epochs (= rounds) of each centralized run")
    ap.add_argument("--fed-rounds", type=int, default=5, help="rounds of the federated runs (stage 3)")
    add_common_args(ap)
    args = ap.parse_args(argv)
    runs = RUNS / f"cola-sweep{'-quick' if args.quick else ''}"
    common = [
        "task=cola",
        f"data_dir={args.data_dir}",
        f"model={args.model}",
        "seed=42",
        "teacher_data_pct=20",
        f"output_dir={runs}",
        "save_model=false",
        "checkpoint_every=0",
        "overwrite=true",
        "batch_size=16",
    ]
    if args.quick:
        args.epochs, args.fed_rounds = 1, 1
        common += ["max_train_samples=120", "max_eval_samples=60", "max_length=32"]
    central = [*common, "num_clients=1", f"rounds={args.epochs}"]
    results: dict[str, dict[str, Any]] = {}

    def centralized(stage: str, label: str, over: list[str]) -> None:
        results[f"{stage}: {label}"] = run_inprocess("fedlora.yaml", [*central, *over, f"run_name=c{len(results)}"])

    for label, over in STAGE1:
        centralized("1", label, over)
    best1 = max(STAGE1, key=lambda c: final_mcc(results[f"1: {c[0]}"]))
    for label, over in stage2(best1[1]):
        centralized("2", label, over)
    ranked = sorted(
        [(k, v) for k, v in results.items()], key=lambda kv: final_mcc(kv[1]), reverse=True
    )  # every centralized run, best first
    overs = {f"1: {lab}": o for lab, o in STAGE1} | {f"2: {lab}": o for lab, o in stage2(best1[1])}
    for name, _ in ranked[:2]:
        fed = [*common, "num_clients=4", f"rounds={args.fed_rounds}", *overs[name], f"run_name=f{len(results)}"]
        results[f"3: federated, {name[3:]}"] = run_torchrun("fedlora.yaml", fed, 3, runs / f"f{len(results)}")
    data = {
        "results": {
            k: {"rounds": v["rounds"], "elapsed_s": v["elapsed_s"], "overrides": overs.get(k)}
            for k, v in results.items()
        },
        "best_centralized": ranked[0][0],
    }
    return render(args, data, Path(args.out), argv)


def render(args: argparse.Namespace, data: dict[str, Any], out: Path, argv: list[str] | None) -> Path:
    name = f"cola-sweep{'-quick' if args.quick else ''}"
    results = data["results"]
    plot_rounds(
        {k: v["rounds"] for k, v in results.items()},
        ["test_mcc", "test_loss"],
        out / f"{name}.png",
        title="CoLA",
        dashed=[k for k in results if not k.startswith("3")],
    )
    rows = [
        [
            k,
            v["rounds"][-1]["test_mcc"],
            max(r["test_mcc"] for r in v["rounds"]),
            v["rounds"][-1]["test_accuracy"],
            v["rounds"][-1]["train_loss"],
            v["elapsed_s"],
        ]
        for k, v in results.items()
    ]
    curves = [[k] + [r["test_mcc"] for r in v["rounds"]] for k, v in results.items()]
    width = max(len(v["rounds"]) for v in results.values())
    body = (
        "MiniLM-L6 + LoRA on GLUE CoLA (train minus the 20% public slice; MCC on the dev set after every "
        f"epoch). Stages 1-2: centralized, one client holding every client example, {args.epochs} epochs, one "
        f"process. Stage 3: the two best settings federated, 4 clients (contiguous split), {args.fed_rounds} rounds, "
        "torchrun with 2 client ranks. Defaults unless a row says otherwise: lr 2e-3, query,value, r 8, alpha 16, "
        f"constant schedule, batch 16, max length 64. Best centralized: {data['best_centralized']}.\n\n"
        + md_table(["run", "final MCC", "best MCC", "final acc", "final train loss", "total s"], rows)
        + "\nMCC per epoch / round (round 0: before training):\n\n"
        + md_table(["run"] + [f"{i}" for i in range(width)], curves)
        + f"\n![MCC and loss per round]({name}.png)\n"
    )
    path = write_report("bench.cola_sweep", name, "CoLA: what makes LoRA learn it", body, data, out, argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
