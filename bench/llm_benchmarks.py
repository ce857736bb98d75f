"""The embedded SmolLM2-135M-Instruct on the offline benchmarks, as `fl eval` scores them, and what
reusing the context's cache buys against a full pass per choice (the same numbers, measured).

    python -m bench.llm_benchmarks                   # 100 seeded rows per benchmark, ~6 min on 2 cores
    python -m bench.llm_benchmarks --quick --model DIR   # a tiny model, 4 rows: for tests

Writes bench/reports/llm-benchmarks.md and .json. lm-evaluation-harness on the same rows:
`python -m bench.lm_eval_compare`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import add_common_args, md_table, write_report

BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa", "mmlu")


def speed(model: Any, tokenizer: Any, items: list[Any], device: Any) -> tuple[float, float, float, float]:
    """On the same items: items per second of `items_logprobs` 8 items a pass (what `fl eval` runs), of
    one item a pass (context once, choices from its cache), of one full pass over context + choice per
    choice; and the largest log-prob difference between the first and the last."""
    from fl.tasks.choices import context_size, direct_logprob, encode_pair, fit, items_logprobs

    t0 = time.perf_counter()
    batched = items_logprobs(model, tokenizer, items, device, 8)
    t1 = time.perf_counter()
    items_logprobs(model, tokenizer, items, device, 1)
    t2 = time.perf_counter()
    limit = context_size(model)  # contexts cut as fl and the harness cut them, so both sides score the same tokens
    slow = [
        [
            direct_logprob(model, ctx, cont, device)
            for ctx, cont in fit([encode_pair(tokenizer, it.context, it.delimiter + c) for c in it.choices], limit)
        ]
        for it in items
    ]
    t3 = time.perf_counter()
    diff = max(abs(a - b) for f, s in zip(batched, slow, strict=True) for a, b in zip(f, s, strict=True))
    n = len(items)
    return n / (t1 - t0), n / (t2 - t1), n / (t3 - t2), diff


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, model_help="causal LM ('smollm2' or a folder)", quick_help="4 rows a benchmark")
    ap.add_argument("--rows", type=int, default=100, help="seeded rows per benchmark")
    ap.add_argument("--shots", type=int, default=5, help="MMLU's dev shots")
    args = ap.parse_args(argv)
    if args.model == "embedded":
        args.model = "smollm2"
    if args.quick:
        args.rows = 4
    import torch

    from fl.data.benchmarks import load_benchmark
    from fl.scoring import load_causal_lm, score

    device = torch.device("cpu")
    model, tokenizer, loaded = load_causal_lm(args.model, device)
    results: dict[str, Any] = {}
    for name in BENCHMARKS:
        items = load_benchmark(name, args.rows, 0, args.shots if name == "mmlu" else 0)
        results[name] = score(model, tokenizer, items, device)
        batched, cached, slow, diff = speed(model, tokenizer, items[: min(len(items), 32)], device)
        results[name].update(
            batched_items_per_s=batched, cached_items_per_s=cached, full_pass_items_per_s=slow, max_logprob_diff=diff
        )
        print(name, results[name], flush=True)
    rows = [
        [
            name,
            r["n"],
            f"{r['acc']:.3f} ± {r['acc_ci95']:.3f}",
            f"{r['acc_norm']:.3f} ± {r['acc_norm_ci95']:.3f}",
            f"{r['batched_items_per_s']:.2f}",
            f"{r['cached_items_per_s']:.2f}",
            f"{r['full_pass_items_per_s']:.2f}",
            f"{r['max_logprob_diff']:.1e}",
        ]
        for name, r in results.items()
    ]
    body = (
        f"`fl eval` of {loaded} in fp32 on {torch.get_num_threads()} threads: {args.rows} seeded rows "
        f"(seed 0) of each benchmark, MMLU with {args.shots} dev shots; ARC and OpenBookQA from their "
        "validation splits (the harness scores their test splits; the package ships no test rows). "
        "Intervals: 95% (1.96 standard errors). Items/s, all on the first 32 rows: 8 items a pass, longest "
        "first (their contexts in one left-padded pass, then all their choices from its cache: what `fl eval` "
        "runs), one item a pass (its context once, its choices from the cache), and one full pass over "
        "context + choice per choice; with the largest difference of a choice's log-probability between the "
        "first and the last on those rows. lm-evaluation-harness on the same rows: "
        "[lm-eval-compare.md](lm-eval-compare.md).\n\n"
        + md_table(
            ["benchmark", "n", "acc", "acc_norm", "items/s (8 a pass)", "(1 a pass)", "(full pass)", "max diff"], rows
        )
        + "\n"
    )
    name = "llm-benchmarks" + ("-quick" if args.quick else "")
    data = {"model": loaded, "rows": args.rows, "shots": args.shots, "results": results}
    return write_report(
        "bench.llm_benchmarks", name, "SmolLM2 on the offline benchmarks", body, data, Path(args.out), argv
    )


if __name__ == "__main__":
    main()
