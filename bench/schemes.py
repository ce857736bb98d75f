"""Scheme comparison: FedAvg, FedLoRA and FedKDLoRA with the same seed, clients, rounds and data,
plus a centralized reference (one client holding all client data: one process, same model, same
total examples and epochs). Writes bench/reports/<task>-schemes.{md,json,png}.

    python -m bench.schemes --task rotten_tomatoes
    python -m bench.schemes --task sst2 --data-dir ../shared/data/glue
    python -m bench.schemes --task rotten_tomatoes --quick      # tiny sizes, seconds: for tests
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from bench.common import GLUE, RUNS, add_common_args, md_table, run_inprocess, run_torchrun, write_report
from fl.output.plots import plot_rounds

SCHEMES = [  # (label, run name, recipe, extra overrides)
    ("FedAvg", "fedavg", "fedavg.yaml", ["scheme=fedavg", "lr=5e-5"]),
    ("FedLoRA", "fedlora", "fedlora.yaml", ["scheme=fedlora"]),
    ("FedKDLoRA (server KD)", "kd-server", "fedkdlora.yaml", ["kd_placement=server", "student_layers=none"]),
    ("FedKDLoRA (client KD)", "kd-clients", "fedkdlora.yaml", ["kd_placement=clients", "student_layers=none"]),
]


def plot(task: str, results: dict[str, dict[str, Any]], path: Path) -> None:
    """Accuracy (or MCC) and loss against round, one line per scheme; centralized references dashed."""
    metric = "test_mcc" if task == "cola" else "test_accuracy"
    runs = {label: doc["rounds"] for label, doc in results.items()}
    plot_rounds(runs, [metric, "test_loss"], path, title=task, dashed=[k for k in runs if k.startswith("Centralized")])


# the keys a task's own FedLoRA recipe tunes (CoLA: see bench/reports/cola-sweep.md); every LoRA scheme
# of the comparison takes them, so that the schemes differ in the scheme alone
TUNED_KEYS = (
    "lr",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_modules_to_save",
    "lr_scheduler",
    "warmup_ratio",
    "head_lr",
    "local_epochs",
)
# and the keys every scheme takes from it (the data order, the arithmetic)
SHARED_KEYS = ("shuffle_train", "precision")


def task_lora_settings(task: str, keys: tuple[str, ...] = TUNED_KEYS) -> list[str]:
    """`key=value` of `keys` in recipes/<task>-fedlora.yaml (none for tasks without one)."""
    from fl.config.recipe import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / f"{task}-fedlora.yaml"
    if task == "rotten_tomatoes" or not recipe.is_file():
        return []
    values = load_recipe(recipe)
    return [f"{k}={values[k]}" for k in keys if k in values]


def with_quick_sizes(args: argparse.Namespace) -> argparse.Namespace:
    """--quick: tiny sizes, seconds."""
    if args.quick:
        args.rounds, args.max_train_samples, args.max_eval_samples = 1, 120, 40
    return args


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.schemes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="rotten_tomatoes", choices=["rotten_tomatoes", "sst2", "cola"])
    ap.add_argument("--data-dir", default=str(GLUE), help="GLUE folder for sst2 / cola")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-train-samples", type=int, default=1200, help="train rows before the public split")
    ap.add_argument("--nproc", type=int, default=3, help="processes per federated run: torchrun when > 1")
    ap.add_argument("--max-eval-samples", type=int, default=None, help="default: the whole test split")
    add_common_args(ap, model_help="model of every scheme and of the teacher")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra fl config overrides for every run")
    ap.add_argument("--from-json", metavar="REPORT.json", help="re-render a saved report's md and png; runs nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        info = {k: saved.pop(k) for k in ("machine", "command", "date")}
        run_args = with_quick_sizes(ap.parse_args(shlex.split(info["command"])[3:]))  # as the run that saved it
        return render(run_args, saved, Path(args.from_json).parent, None, info)
    args = with_quick_sizes(args)
    runs = RUNS / f"{args.task}-schemes{'-quick' if args.quick else ''}"
    common = [
        f"task={args.task}",
        f"num_clients={args.clients}",
        f"rounds={args.rounds}",
        "seed=42",
        f"model={args.model}",
        f"teacher_model={args.model}",
        f"max_train_samples={args.max_train_samples}",
        f"output_dir={runs}",
        "save_model=false",
        "overwrite=true",  # bench/runs/ is the benchmark's own: a rerun replaces it
        "checkpoint_every=0",
        "teacher_data_pct=20",
    ]
    if args.task != "rotten_tomatoes":
        common.append(f"data_dir={args.data_dir}")
    if args.max_eval_samples:
        common.append(f"max_eval_samples={args.max_eval_samples}")
    if args.quick:
        common += ["max_length=32", "kd_public_examples=16", "teacher_pretrain_epochs=1"]
    common += task_lora_settings(args.task, SHARED_KEYS) + args.overrides

    from fl.config.recipe import load_config
    from fl.kd.pretrain import pretrain_teacher, teacher_run_dir

    teacher_cfg = load_config(
        Path(__file__).resolve().parents[1] / "recipes" / "fedkdlora.yaml", [*common, "run_name=teacher"]
    )
    teacher_doc = pretrain_teacher(teacher_cfg)
    teacher = teacher_run_dir(teacher_cfg) / "teacher"

    results: dict[str, dict[str, Any]] = {}
    lora = task_lora_settings(args.task)
    for label, run_name, recipe, extra in SCHEMES:
        tuned = lora if "fedavg" not in run_name else []
        over = [*common, *tuned, *extra, f"teacher_ckpt={teacher}", f"run_name={run_name}"]
        if args.nproc > 1:
            results[label] = run_torchrun(recipe, over, args.nproc, runs / run_name)
        else:
            results[label] = run_inprocess(recipe, over)
    # centralized: one client holds every client example, in one process; same model, LoRA, lr, epochs
    results["Centralized (1 client, FedLoRA)"] = run_inprocess(
        "fedlora.yaml", [*common, *lora, "scheme=fedlora", "num_clients=1", "run_name=centralized"]
    )
    results["Centralized full fine-tuning (1 client, FedAvg)"] = run_inprocess(
        "fedavg.yaml", [*common, "scheme=fedavg", "lr=5e-5", "num_clients=1", "run_name=centralized-full"]
    )

    data = {
        "task": args.task,
        "rounds": args.rounds,
        "clients": args.clients,
        "teacher": teacher_doc["rounds"],
        "lora_settings": lora,
        "results": {k: {"rounds": v["rounds"], "elapsed_s": v["elapsed_s"]} for k, v in results.items()},
    }
    return render(args, data, Path(args.out), argv)


def render(args: argparse.Namespace, data: dict[str, Any], out: Path, argv: list[str] | None, info=None) -> Path:
    """The report (md, json, png) from the runs' data; `info` keeps a saved report's machine/command/date."""
    name = f"{args.task}-schemes{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    results = data["results"]
    plot(args.task, results, out / f"{name}.png")
    metric = "test_mcc" if args.task == "cola" else "test_accuracy"
    rows = []
    for label, doc in results.items():
        last = doc["rounds"][-1]
        per_round = doc["rounds"][1:]

        def per(key: str, rounds: list[dict[str, Any]] = per_round) -> int:
            return round(sum(r.get(key, 0) for r in rounds) / max(len(rounds), 1))

        rows.append(
            [
                label,
                last[metric],
                last["test_loss"],
                doc["elapsed_s"],
                per("bytes_up"),
                per("bytes_down"),
                per("bytes_logits"),
            ]
        )
    curve_rows = [[label] + [r[metric] for r in doc["rounds"]] for label, doc in results.items()]
    body = (
        f"Same seed (42), {args.clients} clients, {args.rounds} rounds, data: {args.task} "
        f"(first {args.max_train_samples} train rows, 20% public slice kept out, test split: "
        f"{args.max_eval_samples or 'all'} rows). Model: the embedded MiniLM-L6 for every scheme; FedKDLoRA's "
        f"teacher is MiniLM-L6 pre-trained on the public slice (teacher test {metric.replace('test_', '')} "
        f"{data['teacher'][-1][metric]:.4f}). Federated runs: "
        + (
            f"torchrun, {args.nproc} processes (rank 0 + {args.nproc - 1} client ranks)"
            if args.nproc > 1
            else "one process"
        )
        + "; bytes per round count one message per participating client (the same in one process and under "
        "torchrun; the JSON's `wire_bytes_*` hold what the collectives moved between ranks); the centralized "
        "references run in one process (their bytes: what their one client would move). "
        + (
            f"Every LoRA scheme takes the settings of recipes/{args.task}-fedlora.yaml: "
            f"{' '.join(data['lora_settings'])}. "
            if data.get("lora_settings")
            else ""
        )
        + "Centralized full fine-tuning: FedAvg's settings (lr 5e-5, every weight) with one client.\n\n"
        + md_table(
            [
                "scheme",
                f"final {metric}",
                "final test loss",
                "total s",
                "bytes up / round",
                "bytes down / round",
                "logits bytes / round",
            ],
            rows,
        )
        + "\n"
        + md_table(["scheme"] + [f"round {i}" for i in range(args.rounds + 1)], curve_rows)
        + f"\n![per-round {metric} and loss]({name}.png)\n"
    )
    title = f"Scheme comparison: {args.task}"
    path = write_report("bench.schemes", name, title, body, data, out, argv=argv, info=info)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
