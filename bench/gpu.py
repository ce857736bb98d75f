"""The GPU benchmark: on whatever device is present (CUDA when there is one), four measurements in
one run. Writes bench/reports/gpu.{md,json} naming the device.

1. Client speed: one fl client's local training (fl.client.runners.train_local) against the plain
   transformers + peft loop (bench.plain.train_client) on the same device, model, batch, sequence
   length and optimizer (AdamW, weight decay 0); examples/s of each, same run, alternating, best of
   --repeats. Target: fl / plain >= 0.9. Also fl with precision=bf16.
2. Round time for 1, 2 and 4 client ranks sharing the device (torchrun, the `shared` layout),
   FedLoRA with 4 clients: seconds per round and peak GPU memory per rank.
3. Collective bandwidth per backend: broadcast and sum-reduce of one large message between two
   ranks (gloo; and NCCL where two GPUs are visible), bytes/s.
4. The same for a BERT-base-sized model built from a config (random weights are fine for timing):
   client speed, and FedAvg's bytes per client (about 440 MB).

    python -m bench.gpu --model .gpu/minilm --data-dir .gpu/glue     # on a GPU machine (no network needed)
    python -m bench.gpu --quick                                      # seconds, on any machine: for tests
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import plain
from bench.common import GLUE, RUNS, add_common_args, md_table, run_torchrun, sst2_shards, write_report


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def bert_base_from_config(tokenizer_from: str, out: Path) -> tuple[str, int]:
    """A BERT-base-sized classifier (12 layers, hidden 768: ~110M parameters, 440 MB in fp32) with
    random weights and the given model's WordPiece tokenizer, saved for fl and the plain loop.
    Returns (its folder, its parameter count)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, num_labels=2))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), sum(p.numel() for p in model.parameters())


def client_speed(model_path: str, rows: list, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """examples/s of fl's client loop and of the plain loop, same work, best of --repeats each."""
    from fl import models
    from fl.client.train import LocalSchedule, train_local
    from fl.config import Config
    from fl.data.labelled import TextDataset
    from fl.tasks.classify import ClassifyTask, encode

    cfg = Config(model=model_path, lora_target_modules="query,value")
    data = TextDataset.from_lists([t for t, _ in rows], [y for _, y in rows])
    task = ClassifyTask.for_rows(data, data, args.max_length)
    fl_model, tok, _ = task.build_model(models.ModelSpec.from_config(cfg, lora=True))
    fl_model.to(device)
    enc = encode(tok, data, args.max_length)
    plain_model, plain_tok = plain.load_model(model_path, lora=True)
    plain_model.to(device)
    out: dict[str, list[float]] = {"fl": [], "fl_bf16": [], "plain": []}
    for rep in range(args.repeats):
        for name in ("plain", "fl", "fl_bf16") if rep % 2 else ("fl", "fl_bf16", "plain"):
            sync(device)
            t0 = time.perf_counter()
            if name == "plain":
                plain.train_client(
                    plain_model,
                    plain_tok,
                    rows,
                    lr=2e-3,
                    seed=rep,
                    batch_size=args.batch_size,
                    max_length=args.max_length,
                    device=device,
                )
            else:
                precision = "bf16" if name == "fl_bf16" else "fp32"
                schedule = LocalSchedule(2e-3, 1, args.batch_size, precision=precision)
                train_local(fl_model, task, enc, schedule, seed=rep, device=device)
            sync(device)
            out[name].append(len(rows) / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in out.items()}
    return {"examples_per_s": best, "ratio_fl_plain": best["fl"] / best["plain"], "all": out}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_times(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """FedLoRA, 4 clients, with 1, 2 and 4 client ranks sharing the device."""
    out = {}
    for ranks in args.ranks:
        over = [
            "task=sst2",
            f"data_dir={args.data_dir}",
            f"model={args.model}",
            "num_clients=4",
            "rounds=2",
            f"max_train_samples={args.fed_rows}",
            f"max_eval_samples={args.eval_rows}",
            f"output_dir={runs}",
            f"run_name=ranks{ranks}",
            "save_model=false",
            "checkpoint_every=0",
            "overwrite=true",
            f"device={'cuda' if torch.cuda.is_available() else 'cpu'}",
            f"batch_size={args.batch_size}",
        ]
        doc = run_torchrun("fedlora.yaml", over, ranks + 1, runs / f"ranks{ranks}")
        recs = doc["rounds"][1:]
        out[str(ranks)] = {
            "round_s": sum(r["time_s"] for r in recs) / len(recs),
            "train_s": sum(r["time_train_s"] for r in recs) / len(recs),
            "eval_s": sum(r["time_eval_s"] for r in recs) / len(recs),
            "layout": doc["env"]["layout"],
            "peak_memory_per_rank": doc.get("peak_memory_per_rank"),
            "final_accuracy": doc["rounds"][-1]["test_accuracy"],
        }
    return out


COLLECTIVE = r"""
import json, os, sys, time, torch
from fl import comm
from fl.comm.message import Message
mb, backend, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rt = comm.init("cuda" if backend == "nccl" else "cpu", num_threads=1)
n = mb * 2**20 // 4
msg = Message({"p": {"x": torch.ones(n, device=rt.device)}})
res = {}
for name, op in (("broadcast", comm.broadcast), ("reduce_sum", comm.reduce_sum)):
    op(rt, msg)  # warm-up
    comm.barrier(rt)
    t0 = time.perf_counter()
    for _ in range(3):
        _, moved = op(rt, msg)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    comm.barrier(rt)
    res[name] = 3 * moved / (time.perf_counter() - t0)
if rt.rank == 0:
    res.update(backend=rt.backend, layout=rt.layout.case)
    open(out, "w").write(json.dumps(res))
comm.shutdown()
"""


def collective_bandwidth(args: argparse.Namespace) -> dict[str, Any]:
    """Bytes/s of broadcast and reduce of one --message-mb message between 2 ranks, per backend."""
    backends = ["gloo"] + (["nccl"] if torch.cuda.device_count() >= 2 else [])
    out = {}
    root = Path(__file__).resolve().parents[1]
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            script, result = Path(tmp) / "c.py", Path(tmp) / "r.json"
            script.write_text(COLLECTIVE)
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                str(script),
                str(args.message_mb),
                backend,
                str(result),
            ]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)
            out[backend] = json.loads(result.read_text()) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE))
    ap.add_argument("--rows", type=int, default=4000, help="examples of the client-speed runs")
    ap.add_argument("--fed-rows", type=int, default=8000, help="train rows of the round-time runs")
    ap.add_argument("--eval-rows", type=int, default=872)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--message-mb", type=int, default=256)
    ap.add_argument("--skip-bert-base", action="store_true")
    add_common_args(
        ap, model_help="MiniLM folder (e.g. .gpu/minilm from shared/gpu/pack.sh)", quick_help="seconds, on any device"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.fed_rows, args.eval_rows, args.repeats, args.ranks = 32, 80, 16, 1, [1, 2]
        args.message_mb, args.skip_bert_base, args.max_length = 4, True, 32
    from fl.models import resolve_model

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model_path = resolve_model(args.model)
    _, shards, _ = sst2_shards(args.data_dir, 1, args.rows, 16)
    rows = shards[0][: args.rows]
    runs = RUNS / f"gpu{'-quick' if args.quick else ''}"
    data: dict[str, Any] = {"device": device_name(device)}
    data["client_speed"] = {"minilm": client_speed(model_path, rows, device, args)}
    data["round_times"] = round_times(args, runs)
    data["collectives"] = collective_bandwidth(args)
    if not args.skip_bert_base:
        with tempfile.TemporaryDirectory() as tmp:
            base, params = bert_base_from_config(model_path, Path(tmp))
            data["client_speed"]["bert-base (random weights)"] = client_speed(base, rows, device, args)
            data["bert_base_fedavg_bytes_per_client"] = params * 4  # fp32 on the wire, every weight
    return render(args, data, Path(args.out), argv)


def render(args: argparse.Namespace, data: dict[str, Any], out: Path, argv: list[str] | None) -> Path:
    speed_rows = [
        [model, *(round(v["examples_per_s"][k], 1) for k in ("plain", "fl", "fl_bf16")), round(v["ratio_fl_plain"], 3)]
        for model, v in data["client_speed"].items()
    ]
    round_rows = [
        [
            ranks,
            v["layout"]["case"],
            round(v["round_s"], 2),
            round(v["train_s"], 2),
            round(v["eval_s"], 2),
            ", ".join(f"{m.get('peak_gpu_mib', m['peak_rss_mib']):.0f}" for m in v["peak_memory_per_rank"] or []),
        ]
        for ranks, v in data["round_times"].items()
    ]
    coll_rows = [
        [b, *(f"{v.get(k, 0) / 1e9:.2f}" if "error" not in v else v["error"][:60] for k in ("broadcast", "reduce_sum"))]
        for b, v in data["collectives"].items()
    ]
    body = (
        f"Device: **{data['device']}**. Client speed: one client, {args.rows} SST-2 examples, batch {args.batch_size}, "
        f"max length {args.max_length}, LoRA r8 on query/value + head, AdamW lr 2e-3 weight decay 0, best of "
        f"{args.repeats} (alternating order; the first repeat is a warm-up). Target: fl / plain >= 0.9. Same examples, "
        "steps and optimizer; fl tokenizes once before the timed loop and batches length-sorted rows, the plain "
        "loop tokenizes every batch and takes rows in random order.\n\n"
        + md_table(["model", "plain ex/s", "fl ex/s", "fl bf16 ex/s", "fl / plain"], speed_rows)
        + f"\nRound time, FedLoRA, 4 clients, {args.fed_rows} train rows, {args.eval_rows} dev rows, client ranks "
        "sharing the device (torchrun):\n\n"
        + md_table(
            ["client ranks", "layout", "s / round", "training s", "scoring s", "peak memory per rank (MiB)"], round_rows
        )
        + f"\nCollectives between 2 ranks, one {args.message_mb} MiB message (GB/s of payload moved):\n\n"
        + md_table(["backend", "broadcast", "reduce"], coll_rows)
    )
    if "bert_base_fedavg_bytes_per_client" in data:
        moved = data["bert_base_fedavg_bytes_per_client"]
        body += f"\nBERT-base-sized model: FedAvg moves {moved:,} bytes per client each way.\n"
    name = f"gpu{'-quick' if args.quick else ''}"
    path = write_report("bench.gpu", name, f"GPU benchmark: {data['device']}", body, data, out, argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
