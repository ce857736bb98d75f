"""Client-level DP: accuracy per round without DP and at epsilon ~8 and ~2 after the same rounds,
with many small clients sampled per round. Writes bench/reports/privacy.{md,json,png}.

Workload: SST-2 (first --max-train-samples rows, no public slice), 200 clients (contiguous shards),
20 sampled a round (Poisson under DP), MiniLM-L6 + LoRA, scored on the 872 dev sentences. The
noise multiplier of each DP run is solved (bisection on Opacus' RDP accountant) so that the
target epsilon is reached exactly after the last round at delta = 1/N^1.1.

    python -m bench.privacy
    python -m bench.privacy --quick        # tiny sizes, seconds: for tests
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import (
    GLUE,
    RUNS,
    add_common_args,
    md_table,
    run_inprocess,
    run_torchrun,
    sampled_sst2,
    write_report,
)
from fl.output.plots import plot_rounds
from fl.strategies.privacy import Accountant, default_delta


def noise_for(epsilon: float, rate: float, rounds: int, delta: float) -> float:
    """The noise multiplier whose epsilon after `rounds` rounds is `epsilon` (bisection, to 1e-4)."""
    lo, hi = 0.05, 50.0
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if Accountant(mid, rate).epsilon(delta, rounds) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.privacy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE))
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--max-train-samples", type=int, default=6000)
    ap.add_argument("--max-eval-samples", type=int, default=None)
    ap.add_argument("--epsilons", default="8,2", help="DP targets, reached after the last round")
    ap.add_argument("--clip", type=float, default=0.5, help="dp_clip: L2 bound of each client's update")
    ap.add_argument(
        "--server-momentum",
        type=float,
        default=0.9,
        help="FedAvgM's server momentum (0: plain FedAvg); post-processing, so DP costs nothing extra",
    )
    ap.add_argument("--nproc", type=int, default=3)
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.per_round, args.rounds, args.max_train_samples, args.max_eval_samples = 20, 4, 2, 200, 40
    runs = RUNS / f"privacy{'-quick' if args.quick else ''}"
    rate, delta = args.per_round / args.clients, default_delta(args.clients)
    common = sampled_sst2(args, runs)
    if args.server_momentum > 0:
        common += ["server_optimizer=momentum", f"server_momentum={args.server_momentum}"]
    settings: list[tuple[str, list[str], float | None]] = [("no DP (epsilon = inf)", [], None)]
    for eps in (float(e) for e in args.epsilons.split(",")):
        z = noise_for(eps, rate, args.rounds, delta)
        settings.append((f"epsilon {eps:g}", [f"dp_clip={args.clip}", f"dp_noise_multiplier={z:.4f}"], z))
    results: dict[str, dict[str, Any]] = {}
    for i, (label, extra, _) in enumerate(settings):
        over = [*common, *extra, f"run_name=p{i}"]
        results[label] = (
            run_torchrun("fedlora.yaml", over, args.nproc, runs / f"p{i}")
            if args.nproc > 1
            else run_inprocess("fedlora.yaml", over)
        )
    name = f"privacy{'-quick' if args.quick else ''}"
    out = Path(args.out)
    plot_rounds(
        {k: v["rounds"] for k, v in results.items()},
        ["test_accuracy", "test_loss"],
        out / f"{name}.png",
        title="SST-2, client-level DP",
    )
    rows = []
    for (label, _, z), doc in zip(settings, results.values(), strict=True):
        last = doc["rounds"][-1]
        best = max(r["test_accuracy"] for r in doc["rounds"][1:])
        noise = "-" if z is None else round(z, 4)
        rows.append(
            [
                label,
                noise,
                last.get("dp_epsilon", "inf"),
                last["test_accuracy"],
                best,
                last["test_loss"],
                doc["elapsed_s"],
            ]
        )
    curves = [[k] + [r["test_accuracy"] for r in v["rounds"]] for k, v in results.items()]
    # Signal against noise, per round: the averaged update has norm <= clip, the noise on the average has
    # norm ~ z * clip / (q N) * sqrt(d), d = the travelling coordinates (fp32 bytes of one client's upload / 4).
    first = next(iter(results.values()))["rounds"][1]
    d = first["bytes_up"] // max(1, len(first.get("sampled_clients") or [1])) // 4
    noise_norms = ", ".join(
        f"{lab}: {z * args.clip / (rate * args.clients) * d**0.5:.2f}" for lab, _, z in settings if z is not None
    )
    momentum = (
        f"server momentum {args.server_momentum:g} (FedAvgM; post-processing of the noised average, no privacy cost)"
        if args.server_momentum > 0
        else "plain FedAvg on the server"
    )
    body = (
        f"SST-2 (first {args.max_train_samples} train rows), {args.clients} clients (contiguous shards of "
        f"{args.max_train_samples // args.clients}), {args.per_round} sampled a round (q = {rate:g}; Poisson "
        "under DP), "
        f"{args.rounds} rounds, MiniLM-L6 + LoRA r8 on query/value + head, AdamW lr 2e-3, 1 local epoch, batch 16, "
        f"seed 42; scored on {args.max_eval_samples or 872} SST-2 dev sentences. DP runs: DP-FedAvg, dp_clip "
        f"{args.clip}, noise on the server, uniform weights over the fixed denominator q N = {rate * args.clients:g}; "
        f"epsilon at delta = 1/N^1.1 = {delta:.2e} from Opacus' RDP accountant, the noise multiplier solved so that "
        f"the target is reached after round {args.rounds}; {momentum}. "
        + (f"torchrun, {args.nproc} processes per run.\n\n" if args.nproc > 1 else "One process per run.\n\n")
        + md_table(["run", "noise multiplier", "final epsilon", "final acc", "best acc", "final loss", "total s"], rows)
        + f"\nSignal against noise each round: the average of the clipped updates has L2 norm at most {args.clip:g}; "
        f"the noise on that average has norm about z * clip / (q N) * sqrt(d) with d = {d:,} travelling coordinates "
        f"(LoRA A and B on query/value and the head): {noise_norms}. Client-level DP needs cohorts large enough "
        "(hundreds to thousands of clients a round, as in McMahan et al.) or fewer coordinates (FFA-LoRA, a lower "
        "rank) for the signal to beat the noise.\n"
        + "\nAccuracy per round (round 0: before training):\n\n"
        + md_table(["run"] + [f"{i}" for i in range(args.rounds + 1)], curves)
        + f"\n![accuracy and loss per round]({name}.png)\n"
    )
    data = {
        "results": {k: {"rounds": v["rounds"], "elapsed_s": v["elapsed_s"]} for k, v in results.items()},
        "noise_multipliers": {lab: z for lab, _, z in settings},
    }
    path = write_report("bench.privacy", name, "Client-level differential privacy", body, data, out, argv=argv)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
