"""Federated fine-tuning of a causal LLM: FedLoRA, FFA-LoRA and FedKDLoRA (KD on the clients, the
teacher's top-k token probabilities travelling) on the sentiment instructions, same seed, clients,
rounds and data. Writes bench/reports/llm.{md,json,png}: per-round answer accuracy and perplexity,
bytes per round (the adapter, what the full model would cost, the top-k logits and what dense
logits would cost), time per round.

    python -m bench.llm                          # SmolLM2-135M-Instruct, torchrun with 3 processes
    python -m bench.llm --quick --model <folder> # tiny sizes: checks the benchmark runs
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import RUNS, add_common_args, md_table, run_inprocess, run_torchrun, write_report
from fl.output.plots import plot_rounds

SCHEMES = [  # (label, run name, recipe, extra overrides)
    ("FedLoRA (fedit)", "fedlora", "llm-sentiment.yaml", []),
    ("FFA-LoRA", "ffa", "llm-sentiment.yaml", ["lora_aggregation=ffa"]),
    (
        "FedKDLoRA (client KD, top-k)",
        "kd-clients",
        "llm-sentiment.yaml",
        ["scheme=fedkdlora", "kd_placement=clients"],
    ),
]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-train-samples", type=int, default=400, help="train rows before the 20%% public slice")
    ap.add_argument("--max-eval-samples", type=int, default=100)
    ap.add_argument("--nproc", type=int, default=3, help="processes per federated run: torchrun when > 1")
    ap.add_argument("--top-k", type=int, default=32, help="kd_top_k: teacher tokens per position that travel")
    add_common_args(ap, model_help="causal LM of every scheme and of the teacher ('smollm2': the embedded one)")
    ap.set_defaults(model="smollm2")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra fl config overrides for every run")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.max_train_samples, args.max_eval_samples = 1, 80, 16
    runs = RUNS / f"llm{'-quick' if args.quick else ''}"
    common = [
        f"model={args.model}",
        f"teacher_model={args.model}",
        f"num_clients={args.clients}",
        f"rounds={args.rounds}",
        f"max_train_samples={args.max_train_samples}",
        f"max_eval_samples={args.max_eval_samples}",
        f"output_dir={runs}",
        "save_model=false",
        "overwrite=true",
        "checkpoint_every=0",
        f"kd_top_k={args.top_k}",
        "kd_public_examples=64",
        "teacher_pretrain_epochs=2",
        "teacher_lr=1e-4",
        "distill_lr=2e-5",
        "student_layers=none",
    ]
    if args.quick:
        common += ["max_length=48", "kd_public_examples=8", "teacher_pretrain_epochs=1"]
    common += args.overrides

    from fl.config.recipe import load_config
    from fl.kd.pretrain import pretrain_teacher, teacher_run_dir

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    teacher_cfg = load_config(recipes / "llm-sentiment.yaml", [*common, "run_name=teacher"])
    teacher_doc = pretrain_teacher(teacher_cfg)
    teacher = teacher_run_dir(teacher_cfg) / "teacher"
    results: dict[str, dict[str, Any]] = {}
    for label, run_name, recipe, extra in SCHEMES:
        over = [*common, *extra, f"teacher_ckpt={teacher}", f"run_name={run_name}"]
        if args.nproc > 1:
            results[label] = run_torchrun(recipe, over, args.nproc, runs / run_name)
        else:
            results[label] = run_inprocess(recipe, over)
    data = {
        "rounds": args.rounds,
        "clients": args.clients,
        "top_k": args.top_k,
        "teacher": teacher_doc["rounds"],
        "results": {
            k: {key: v[key] for key in ("rounds", "elapsed_s", "total_parameters", "trainable_parameters")}
            for k, v in results.items()
        },
    }
    return render(args, data, Path(args.out), argv)


def byte_rows(args: argparse.Namespace, results: dict[str, Any], vocab: int) -> list[list[Any]]:
    """Bytes per round and what the alternatives would move (same clients, same rows)."""
    rows = []
    for label, doc in results.items():
        per_round = doc["rounds"][1:]
        mean = {k: sum(r.get(k) or 0 for r in per_round) / len(per_round) for k in ("bytes_up", "bytes_logits")}
        clients = len(per_round[0]["sampled_clients"])
        full = doc["total_parameters"] * 4 * clients  # FedAvg: every weight up, fp32
        # top-k: per scored token k probabilities + k ids down, k probabilities up; dense: the vocabulary each way
        tokens = mean["bytes_logits"] / (clients * 3 * args.top_k * 4) if mean["bytes_logits"] else 0
        dense = tokens * vocab * 4 * 2 * clients
        time_s = sum(r["time_s"] for r in per_round) / len(per_round)
        rows.append([label, round(mean["bytes_up"]), full, round(mean["bytes_logits"]), round(dense), time_s])
    return rows


def render(args: argparse.Namespace, data: dict[str, Any], out: Path, argv: list[str] | None) -> Path:
    name = f"llm{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    results = data["results"]
    runs = {label: doc["rounds"] for label, doc in results.items()}
    plot_rounds(runs, ["test_accuracy", "test_perplexity"], out / f"{name}.png", title="sentiment instructions")
    vocab = 49152 if args.model == "smollm2" else 0
    curve = [[label] + [r.get("test_accuracy") for r in doc["rounds"]] for label, doc in results.items()]
    ppl = [[label] + [r.get("test_perplexity") for r in doc["rounds"]] for label, doc in results.items()]
    teacher = data["teacher"][-1]
    body = (
        f"Same seed (42), {args.clients} clients, {args.rounds} rounds; the sentiment instructions of "
        f"recipes/llm-sentiment.yaml (its settings: bf16, LoRA r8 on q/v, lr 5e-4) with the first "
        f"{args.max_train_samples} train rows (20% public slice kept out) and {args.max_eval_samples} test rows; "
        f"model {args.model}. test_accuracy: greedy generation, the first answer word of the reply. "
        f"FedKDLoRA's teacher: the same model fully fine-tuned on the public slice (2 epochs, lr 1e-4; test "
        f"accuracy {teacher.get('test_accuracy')}), kd_top_k={args.top_k}. Federated runs: "
        + (f"torchrun, {args.nproc} processes" if args.nproc > 1 else "one process")
        + ".\n\n"
        + md_table(["scheme"] + [f"accuracy r{i}" for i in range(args.rounds + 1)], curve)
        + "\n"
        + md_table(["scheme"] + [f"perplexity r{i}" for i in range(args.rounds + 1)], ppl)
        + "\nBytes per round, every sampled client together (fp32 on the wire): the adapter that travels up, "
        "what FedAvg's full model would move up, the top-k KD logits (both ways) and what the dense "
        f"vocabulary ({vocab or '?'} tokens) would move for the same scored tokens.\n\n"
        + md_table(
            ["scheme", "adapter up", "full model up", "top-k logits", "dense logits", "s / round"],
            byte_rows(args, results, vocab),
        )
        + f"\n![per-round accuracy and perplexity]({name}.png)\n"
    )
    path = write_report(
        "bench.llm", name, "Causal LLM: FedLoRA, FFA-LoRA, FedKDLoRA on token logits", body, data, out, argv=argv
    )
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
