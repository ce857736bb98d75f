"""Framework overhead: an fl round against the same local training done by a plain loop with no
framework (transformers + peft + torch only), measured in one run on the same cores; and where an
fl round's time goes (client training, communication, aggregation, evaluation, the rest).

Reference workload: MiniLM-L6 + LoRA r8 (FedLoRA) or all weights (FedAvg), 4 clients x 500 SST-2
examples, batch 16, max length 64, 1 local epoch, 3 rounds, evaluation on the 872 dev sentences.

    python -m bench.overhead                       # both schemes, one process each
    python -m bench.overhead --torchrun            # also fl under torchrun (rank 0 + 2 client ranks)
    python -m bench.overhead --quick               # seconds: checks the benchmark runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import GLUE, REPORTS, RUNS, md_table, run_inprocess, run_torchrun, write_report


def plain_loop(
    model_path: str,
    train: list[tuple[str, int]],
    test: list[tuple[str, int]],
    *,
    clients: int,
    rounds: int,
    lr: float,
    lora: bool,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 42,
) -> list[dict[str, float]]:
    """FedAvg / FedLoRA written out with no framework: per round, each client trains from the global
    weights with a fresh AdamW, the weights are averaged by example count, the test set is scored."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if lora:
        cfg = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "value"]
        )
        model = get_peft_model(model, cfg)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    glob = {n: p.detach().clone() for n, p in params.items()}
    shards = [train[len(train) * c // clients : len(train) * (c + 1) // clients] for c in range(clients)]
    records = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        total = {n: torch.zeros_like(v) for n, v in glob.items()}
        for c, shard in enumerate(shards):
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(glob[n])
            opt = torch.optim.AdamW(params.values(), lr=lr)
            model.train()
            order = torch.randperm(len(shard), generator=torch.Generator().manual_seed(seed + 100 * r + c)).tolist()
            for i in range(0, len(order), batch_size):
                rows = [shard[j] for j in order[i : i + batch_size]]
                batch = tok(
                    [t for t, _ in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                )
                loss = F.cross_entropy(model(**batch).logits, torch.tensor([y for _, y in rows]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            for n, p in params.items():
                total[n] += p.detach() * len(shard)
        glob = {n: v / len(train) for n, v in total.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(glob[n])
        t_eval = time.perf_counter()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for i in range(0, len(test), 128):
                rows = test[i : i + 128]
                batch = tok(
                    [t for t, _ in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                )
                correct += int((model(**batch).logits.argmax(-1) == torch.tensor([y for _, y in rows])).sum())
        done = time.perf_counter()
        records.append(
            {"round": r, "time_s": done - t0, "time_eval_s": done - t_eval, "test_accuracy": correct / len(test)}
        )
    return records


def breakdown(rec: dict[str, Any]) -> list[float]:
    parts = [
        rec.get(k, 0.0) for k in ("time_train_s", "time_comm_s", "time_aggregate_s", "time_server_kd_s", "time_eval_s")
    ]
    return [rec["time_s"], *parts, rec["time_s"] - sum(parts)]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE), help="GLUE folder (SST-2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-client", type=int, default=500)
    ap.add_argument("--schemes", default="fedlora,fedavg")
    ap.add_argument("--model", default="embedded", help="model for both loops ('embedded' = MiniLM-L6)")
    ap.add_argument("--torchrun", action="store_true", help="also time fl under torchrun (3 processes)")
    ap.add_argument("--quick", action="store_true", help="seconds: 1 round, 8 examples per client, 16 test rows")
    ap.add_argument("--out", default=str(REPORTS))
    args = ap.parse_args(argv)
    clients, max_eval = 4, None
    if args.quick:
        args.rounds, args.per_client, max_eval = 1, 8, 16

    from fl.config import Config
    from fl.data import load_task
    from fl.models import resolve_model

    n_train = int(clients * args.per_client / 0.8)  # 20% public slice kept out, as in fl
    task = load_task(Config(task="sst2", data_dir=args.data_dir, max_train_samples=n_train, max_eval_samples=max_eval))
    public = int(n_train * 0.2)
    train = list(zip(task.train.texts[public:], task.train.labels[public:], strict=True))
    test = list(zip(task.test.texts, task.test.labels, strict=True))
    model_path = resolve_model(args.model)
    runs = RUNS / f"overhead{'-quick' if args.quick else ''}"
    rows, breakdown_rows, data = [], [], {}
    for scheme in args.schemes.split(","):
        lr = 5e-5 if scheme == "fedavg" else 2e-3
        plain = plain_loop(
            model_path, train, test, clients=clients, rounds=args.rounds, lr=lr, lora=scheme == "fedlora"
        )
        common = [
            f"scheme={scheme}",
            "task=sst2",
            f"data_dir={args.data_dir}",
            f"max_train_samples={n_train}",
            f"num_clients={clients}",
            f"rounds={args.rounds}",
            f"lr={lr}",
            f"model={args.model}",
            f"output_dir={runs}",
            "save_model=false",
            "checkpoint_every=0",
            "partition=contiguous",
        ] + ([f"max_eval_samples={max_eval}"] if max_eval else [])
        fl_doc = run_inprocess("fedlora.yaml", [*common, f"run_name={scheme}-sim"])
        variants = [("fl, 1 process", fl_doc)]
        if args.torchrun:
            variants.append(
                (
                    "fl, torchrun 3 procs",
                    run_torchrun("fedlora.yaml", [*common, f"run_name={scheme}-tr"], 3, runs / f"{scheme}-tr"),
                )
            )
        plain_round = sum(r["time_s"] for r in plain) / len(plain)
        for label, doc in variants:
            fl_rounds = doc["rounds"][1:]
            fl_round = sum(r["time_s"] for r in fl_rounds) / len(fl_rounds)
            rows.append(
                [
                    scheme,
                    label,
                    plain_round,
                    fl_round,
                    fl_round / plain_round,
                    plain[-1]["test_accuracy"],
                    doc["rounds"][-1]["test_accuracy"],
                ]
            )
            mean = [sum(col) / len(fl_rounds) for col in zip(*(breakdown(r) for r in fl_rounds), strict=True)]
            breakdown_rows.append([scheme, label, *mean])
            data[f"{scheme}/{label}"] = {"plain": plain, "fl": doc["rounds"], "ratio": fl_round / plain_round}
    body = (
        f"Workload: SST-2, {clients} clients x {args.per_client} examples, batch 16, max length 64, 1 local epoch, "
        f"{args.rounds} rounds, evaluation on {len(test)} dev sentences every round. Plain loop: one process, "
        "transformers + peft + torch only, same shards, same optimizer and learning rate.\n\n"
        + md_table(
            [
                "scheme",
                "fl variant",
                "plain loop s / round",
                "fl s / round",
                "ratio fl / plain",
                "plain final acc",
                "fl final acc",
            ],
            rows,
        )
        + "\nWhere an fl round goes (mean seconds per round):\n\n"
        + md_table(
            [
                "scheme",
                "fl variant",
                "round",
                "client training",
                "communication",
                "aggregation",
                "server KD",
                "evaluation",
                "rest (idle, bookkeeping)",
            ],
            breakdown_rows,
        )
    )
    name = f"overhead{'-quick' if args.quick else ''}"
    path = write_report("bench.overhead", name, "Framework overhead", body, data, Path(args.out))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
