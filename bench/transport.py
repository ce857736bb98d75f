"""Transport at scale: peak memory per rank of a FedAvg round of a BERT-base-sized model (110M
parameters, random weights from a config) with messages whole (bucket_mb=0, as before) and in
buckets; and accuracy and wire bytes per round of FedAvg and FedLoRA with each update
compression on the SST-2 workload of bench.algorithms (same seeds). Writes
bench/reports/transport.{md,json}.

    python -m bench.transport --data-dir ../shared/data/glue
    python -m bench.transport --quick        # tiny sizes: checks the benchmark runs
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import GLUE, RUNS, add_common_args, md_table, run_torchrun, write_report

CODECS = ("none", "bf16", "int8", "topk")


def bert_base(out: Path, like: str, quick: bool) -> str:
    """A BERT-base-sized classifier (random weights) saved with the embedded model's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if (out / "config.json").is_file():
        return str(out)
    from fl.models import resolve_model

    path = resolve_model(like)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if quick else {}
    cfg = BertConfig(vocab_size=AutoTokenizer.from_pretrained(path).vocab_size, num_labels=2, **size)
    BertForSequenceClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return str(out)


def memory(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """Peak RSS per rank, one FedAvg round (2 clients on 2 client ranks), whole messages vs buckets."""
    model = bert_base(runs / "bert-base", args.model, args.quick)
    out = {}
    for bucket in ("0", "25"):
        over = [
            f"model={model}",
            "scheme=fedavg",
            "lr=5e-5",
            "num_clients=2",
            "rounds=1",
            "max_train_samples=40",
            "max_eval_samples=16",
            "max_length=32",
            f"bucket_mb={bucket}",
            f"output_dir={runs}",
            f"run_name=mem-{bucket}",
            "save_model=false",
            "overwrite=true",
            "checkpoint_every=0",
        ]
        doc = run_torchrun("fedavg.yaml", over, 3, runs / f"mem-{bucket}")
        out[bucket] = {
            "peak_rss_mib": [m["peak_rss_mib"] for m in doc["peak_memory_per_rank"]],
            "total_parameters": doc["total_parameters"],
            "wall_s": doc["wall_s"],
        }
    return out


def compression(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    common = [
        "task=sst2",
        f"data_dir={args.data_dir}",
        f"model={args.model}",
        "num_clients=8",
        "clients_per_round=4",
        "partition=dirichlet",
        "dirichlet_alpha=0.3",
        f"rounds={args.rounds}",
        f"max_train_samples={args.rows}",
        "teacher_data_pct=0",
        "lr=2e-3",
        "seed=42",
        f"output_dir={runs}",
        "save_model=false",
        "overwrite=true",
        "checkpoint_every=0",
        "topk_ratio=0.1",
    ]
    if args.quick:
        common += ["max_length=32", "max_eval_samples=40"]
    out = {}
    for scheme, extra in (("fedlora", []), ("fedavg", ["scheme=fedavg", "lr=5e-5"])):
        for codec in CODECS:
            name = f"{scheme}-{codec}"
            doc = run_torchrun(
                "fedlora.yaml", [*common, *extra, f"update_compression={codec}", f"run_name={name}"], 3, runs / name
            )
            recs = doc["rounds"][1:]
            out[name] = {
                "accuracy": [r["test_accuracy"] for r in doc["rounds"]],
                "bytes_up": sum(r["bytes_up"] for r in recs) / len(recs),
                "wire_up": sum(r["wire_bytes_up"] for r in recs) / len(recs),
                "wire_down": sum(r["wire_bytes_down"] for r in recs) / len(recs),
                "round_s": sum(r["time_s"] for r in recs) / len(recs),
            }
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1600, help="SST-2 train rows (bench.algorithms' workload)")
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.rows = 1, 160
    runs = RUNS / f"transport{'-quick' if args.quick else ''}"
    results = {"memory": memory(args, runs), "compression": compression(args, runs)}
    return render(args, results, Path(args.out), argv)


def render(args: argparse.Namespace, results: dict[str, Any], out: Path, argv: list[str] | None) -> Path:
    name = f"transport{'-quick' if args.quick else ''}"
    mem = results["memory"]
    mem_rows = [
        [f"{b} MB" if b != "0" else "whole (before)", *[round(x) for x in mem[b]["peak_rss_mib"]], mem[b]["wall_s"]]
        for b in ("0", "25")
    ]
    comp = results["compression"]
    rows = []
    for scheme in ("fedlora", "fedavg"):
        ref = comp[f"{scheme}-none"]
        for codec in CODECS:
            r = comp[f"{scheme}-{codec}"]
            final, cost = r["accuracy"][-1], r["accuracy"][-1] - ref["accuracy"][-1]
            ratio = r["bytes_up"] / ref["bytes_up"]
            rows.append(
                [
                    scheme,
                    codec,
                    final,
                    cost,
                    round(r["bytes_up"]),
                    ratio,
                    round(r["wire_up"]),
                    round(r["wire_down"]),
                    r["round_s"],
                ]
            )
    body = (
        f"Peak resident memory per rank (MiB), one FedAvg round of a BERT-base-sized classifier "
        f"({mem['0']['total_parameters']:,} parameters, random weights) with 2 clients on 2 client ranks under "
        "torchrun (rank 0 first):\n\n"
        + md_table(["messages", "rank 0", "rank 1", "rank 2", "wall s"], mem_rows)
        + f"\nCompression on bench.algorithms' workload (SST-2, first {args.rows} train rows, no public slice, "
        f"Dirichlet 0.3, 8 clients, 4 a round, {args.rounds} rounds, seed 42, all 872 dev rows, FedLoRA lr 2e-3 / "
        "FedAvg lr 5e-5, fp32, torchrun with 3 processes; topk_ratio 0.1). bytes up: what a deployment moves "
        "(one message per sampled client); wire: what fl's collectives moved between its ranks (compressed: "
        "each client's payload).\n\n"
        + md_table(
            [
                "scheme",
                "codec",
                "final accuracy",
                "vs none",
                "bytes up / round",
                "bytes ratio",
                "wire up / round",
                "wire down / round",
                "s / round",
            ],
            rows,
        )
    )
    path = write_report(
        "bench.transport", name, "Transport: buckets and compressed updates", body, results, out, argv=argv
    )
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
