"""What a local training step of the quick start costs on this machine, by precision, batch order and
dropout: fl's own `train_local` on the recipe's model (MiniLM-L6 + LoRA r8) and rows (Rotten Tomatoes
sentences, batch 16). Writes bench/reports/steps.{md,json}.

    python -m bench.steps                 # recipes/fedlora.yaml's model and data
    python -m bench.steps --quick         # tiny sizes: checks the benchmark runs

Each variant trains a fresh model: a few warm-up steps, then `--rows` rows timed. bf16 is timed on
`--bf16-rows` rows only: where the CPU has no bf16 units its kernels are emulated and a step takes
seconds. What `precision=auto` picks here is printed with the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import add_common_args, md_table, write_report

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (  # (precision, group_by_length, dropout off)
    ("fp32", False, False),
    ("fp32", True, False),
    ("fp32", True, True),
    ("bf16", False, False),
    ("bf16", True, True),
)


def time_variant(over: list[str], precision: str, grouped: bool, no_dropout: bool, rows: int) -> dict[str, Any]:
    """ms per row of `train_local` over `rows` rows (after 3 warm-up steps), and the mean padded width."""
    from fl import models
    from fl.client.train import LocalSchedule, train_local
    from fl.config.recipe import load_config
    from fl.tasks import build_task
    from fl.tasks.order import epoch_batches

    drop = ["lora_dropout=0", "model_dropout=0"] if no_dropout else []
    cfg = load_config(
        ROOT / "recipes" / "fedlora.yaml",
        [*over, f"precision={precision}", *drop, f"group_by_length={str(grouped).lower()}"],
    )
    task = build_task(cfg)
    model, tokenizer, _ = task.build_model(models.ModelSpec.from_config(cfg, lora=True))
    data = task.encode(tokenizer, task.train.subset(range(min(rows, len(task.train)))))
    sched = LocalSchedule.from_config(cfg)
    cpu = torch.device("cpu")
    train_local(
        model,
        task,
        data,
        LocalSchedule(sched.lr, 1, sched.batch_size, precision=precision, max_steps=3),
        seed=1,
        device=cpu,
    )
    t0 = time.perf_counter()
    train_local(model, task, data, sched, seed=2, device=cpu)
    took = time.perf_counter() - t0
    lengths = [len(x) for x in data.input_ids]
    batches = epoch_batches(lengths, sched.batch_size, 2, grouped)
    return {
        "precision": precision,
        "batches": "grouped by length" if grouped else "shuffled",
        "dropout": "off" if no_dropout else "on (model 0.1, LoRA 0.05)",
        "rows": len(data),
        "ms_per_row": 1000 * took / len(data),
        "ms_per_step": 1000 * took / len(batches),
        "mean_tokens": sum(lengths) / len(lengths),
        "mean_padded_width": sum(max(lengths[i] for i in b) for b in batches) / len(batches),
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--rows", type=int, default=800, help="rows timed per fp32 variant")
    ap.add_argument("--bf16-rows", type=int, default=64, help="rows timed per bf16 variant")
    args = ap.parse_args(argv)
    from fl.models.precision import native_bf16, resolve_precision

    over = [f"model={args.model}"]
    rows = (32, 32) if args.quick else (args.rows, args.bf16_rows)
    results = [time_variant(over, p, g, d, rows[p == "bf16"]) for p, g, d in VARIANTS]
    base = results[0]["ms_per_row"]
    table = [
        [
            r["precision"],
            r["batches"],
            r["dropout"],
            r["rows"],
            r["mean_padded_width"],
            r["ms_per_step"],
            r["ms_per_row"],
            base / r["ms_per_row"],
        ]
        for r in results
    ]
    cpu = torch.device("cpu")
    body = (
        f"`recipes/fedlora.yaml`'s model ({args.model}) and its first rows of train, batch 16, lr 2e-3, "
        f"torch threads {torch.get_num_threads()}, "
        f"fl's `train_local` (one client's loop). bf16 units on this CPU: {native_bf16(cpu)}; `precision=auto` "
        f"trains in {resolve_precision('auto', cpu)} here.\n\n"
        + md_table(
            [
                "precision",
                "batches",
                "dropout",
                "rows timed",
                "mean padded width",
                "ms / step",
                "ms / row",
                "speed-up vs first row",
            ],
            table,
        )
    )
    data = {"native_bf16": native_bf16(cpu), "auto_precision": resolve_precision("auto", cpu), "results": results}
    print(body)
    path = write_report(
        "bench.steps",
        "steps",
        "Local training steps: precision, batch order, dropout",
        body,
        data,
        Path(args.out),
        argv,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
