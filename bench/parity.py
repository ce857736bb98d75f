"""Behaviour parity: run the reference jobs of a structural change and compare their per-round numbers.

    python -m bench.parity run --out /tmp/parity-new              # runs every job, writes parity.json
    python -m bench.parity compare OLD/parity.json NEW/parity.json [--tol 1e-6]

The jobs (issue 19's acceptance list, and a few more) use small data so that the whole set takes
about 4 minutes on 2 cores. `--code DIR` runs the jobs with DIR first on PYTHONPATH (e.g. a
worktree of an older commit). Every job trains in fp32 (`precision=fp32`: the references of
2026-12-02 were computed at 8d29dca, before the quick start moved to bf16) and in the plain shuffle
(`group_by_length=false`, passed only to code that knows the key: the quick start groups by length
since 2026-12-03).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

S = "num_clients=4 max_train_samples=240 max_eval_samples=64 rounds=2 seed=21 save_model=false precision=fp32".split()
KEYS = (
    "test_loss",
    "test_accuracy",
    "teacher_test_accuracy",
    "bytes_up",
    "bytes_down",
    "dp_epsilon",  # issue 19's list
    "test_mcc",
    "test_f1",
    "train_loss",
    "teacher_test_loss",
    "aggregation_error",
    "wire_bytes_up",
    "wire_bytes_down",
    "bytes_logits",
    "bytes_products",
    "kd_student_loss",
    "kd_teacher_loss",
    "client_train_loss",
)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]


def jobs(out: Path) -> list[tuple[str, list[str]]]:
    teacher = out / "teacher-rotten_tomatoes-seed21" / "teacher"
    fl = [sys.executable, "-m", "fl"]
    return [
        ("fedlora", [*fl, "run", "recipes/fedlora.yaml", *S]),
        ("fedavg", [*fl, "run", "recipes/fedavg.yaml", *S]),
        (
            "scaffold-adam-torchrun",
            [
                *TORCHRUN,
                "-m",
                "fl",
                "run",
                "recipes/fedlora.yaml",
                *S,
                "scaffold=true",
                "server_optimizer=adam",
                "server_lr=0.01",
                "clients_per_round=3",
            ],
        ),
        (
            "fedex-dirichlet",
            [
                *fl,
                "run",
                "recipes/fedlora.yaml",
                *S,
                "lora_aggregation=fedex",
                "partition=dirichlet",
                "dirichlet_alpha=0.3",
            ],
        ),
        ("dp", [*fl, "run", "recipes/fedlora.yaml", *S, "dp_clip=0.5", "dp_noise_multiplier=0.5", "dp_delta=1e-3"]),
        ("pretrain-teacher", [*fl, "pretrain-teacher", "recipes/fedkdlora.yaml", *S, "teacher_pretrain_epochs=1"]),
        ("fedkdlora-server", [*fl, "run", "recipes/fedkdlora.yaml", *S, f"teacher_ckpt={teacher}"]),
        ("ffa-prox", [*fl, "run", "recipes/fedlora.yaml", *S, "lora_aggregation=ffa", "prox_mu=0.1"]),
        ("flex", [*fl, "run", "recipes/fedlora.yaml", *S, "lora_aggregation=flex", "lora_ranks=8,4,2"]),
        ("median-torchrun", [*TORCHRUN, "-m", "fl", "run", "recipes/fedlora.yaml", *S, "aggregation=median"]),
        (
            "dp-clients-torchrun",
            [
                *TORCHRUN,
                "-m",
                "fl",
                "run",
                "recipes/fedlora.yaml",
                *S,
                "dp_clip=0.5",
                "dp_noise_placement=clients",
                "clients_per_round=2",
                "lr=5e-3",
            ],
        ),
        (
            "fedkdlora-clients-torchrun",
            [
                *TORCHRUN,
                "-m",
                "fl",
                "run",
                "recipes/fedkdlora.yaml",
                *S,
                f"teacher_ckpt={teacher}",
                "kd_placement=clients",
                "run_name=kd-clients",
            ],
        ),
    ]


def plain_order(code: Path, cmd: list[str]) -> list[str]:
    """`group_by_length=false` for a job of `fl run` with code that has the key (older code shuffles plainly)."""
    config = code / "fl" / "config.py"  # a flat module before the config sections (fl/config/local.py)
    text = config.read_text() if config.is_file() else (code / "fl" / "config" / "local.py").read_text()
    knows = "group_by_length" in text
    return ["group_by_length=false"] if knows and "run" in cmd else []


def results_file(out: Path, name: str) -> Path:
    return {
        "pretrain-teacher": out / "teacher-rotten_tomatoes-seed21" / "teacher_metrics.json",
        "fedavg": out / "fedavg-rotten_tomatoes-seed21" / "results.json",
        "fedkdlora-server": out / "fedkdlora-rotten_tomatoes-seed21" / "results.json",
        "fedkdlora-clients-torchrun": out / "kd-clients" / "results.json",
    }.get(name, out / name / "results.json")


def flatten(rec: dict) -> dict:
    """{"client_train_loss": {"0": x}} -> {"client_train_loss.0": x}: every value a number (or None)."""
    out = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update({f"{k}.{c}": x for c, x in v.items()})
        else:
            out[k] = v
    return out


def run(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.code:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.code).resolve()), env.get("PYTHONPATH", "")]).rstrip(":")
    cwd = Path(args.code).resolve() if args.code else Path.cwd()
    found: dict[str, list[dict]] = {}
    for name, cmd in jobs(out):
        if args.only and name not in args.only and name != "pretrain-teacher":
            continue
        named = [*cmd, f"output_dir={out}", *plain_order(cwd, cmd)]
        if name not in ("fedavg", "pretrain-teacher", "fedkdlora-server", "fedkdlora-clients-torchrun"):
            named.append(f"run_name={name}")
        t0 = time.perf_counter()
        proc = subprocess.run(named, cwd=cwd, env=env, capture_output=True, text=True)
        took = time.perf_counter() - t0
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        print(f"{name}: exit {proc.returncode} in {took:.0f} s", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        doc = json.loads(results_file(out, name).read_text())
        found[name] = [flatten({k: r.get(k) for k in KEYS if k in r}) for r in doc["rounds"]]
    (out / "parity.json").write_text(json.dumps(found, indent=1))
    print(f"wrote {out / 'parity.json'}")


def compare(args: argparse.Namespace) -> int:
    old, new = (json.loads(Path(p).read_text()) for p in (args.old, args.new))
    worst, bad = 0.0, []
    for name in old:
        if name not in new:
            bad.append(f"{name}: missing in the new run")
            continue
        if len(old[name]) != len(new[name]):
            bad.append(f"{name}: {len(old[name])} rounds vs {len(new[name])}")
            continue
        for r, (a, b) in enumerate(zip(old[name], new[name], strict=True)):
            for k in sorted(set(a) | set(b)):
                if (k in a) != (k in b):
                    bad.append(f"{name} round {r}: {k} only on one side")
                elif k in a and a[k] is not None and b[k] is not None:
                    diff = abs(float(a[k]) - float(b[k]))
                    worst = max(worst, diff if math.isfinite(diff) else math.inf)
                    if not diff <= args.tol:
                        bad.append(f"{name} round {r}: {k} {a[k]} vs {b[k]}")
                elif a.get(k) != b.get(k):
                    bad.append(f"{name} round {r}: {k} {a.get(k)} vs {b.get(k)}")
    print(f"{len(old)} jobs compared; largest difference {worst:.3g} (tolerance {args.tol:g})")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every job and write parity.json")
    r.add_argument("--out", required=True)
    r.add_argument("--code", default=None, help="a checkout to run instead of this one (put first on PYTHONPATH)")
    r.add_argument("--only", nargs="*", default=None, help="job names to run (the teacher always runs)")
    c = sub.add_parser("compare", help="compare two parity.json files")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        sys.exit(compare(args))


if __name__ == "__main__":
    main()
