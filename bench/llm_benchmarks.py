"""The embedded SmolLM2-135M-Instruct on the offline benchmarks, as `fl eval` scores them, and what
reusing the context's cache buys against a full pass per choice (the same numbers, measured).

    python -m bench.llm_benchmarks                   # 100 seeded rows per benchmark, ~6 min on 2 cores
    python -m bench.llm_benchmarks --quick --model DIR   # a tiny model, 4 rows: for tests

Writes bench/reports/llm-benchmarks.md and .json. Still to come (issue 35): the same rows through
lm-evaluation-harness, for its numbers and items per second beside fl's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import add_common_args, md_table, write_report

BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa", "mmlu")


def speed(model: Any, tokenizer: Any, items: list[Any], device: Any) -> tuple[float, float, float]:
    """On the same items: (items per second of `choice_logprobs`, items per second of one full pass
    over context + choice per choice, the largest log-prob difference between the two)."""
    from fl.tasks.choices import choice_logprobs, direct_logprob, encode_pair

    t0 = time.perf_counter()
    fast = [choice_logprobs(model, tokenizer, it, device) for it in items]
    t1 = time.perf_counter()
    slow = [
        [direct_logprob(model, *encode_pair(tokenizer, it.context, it.delimiter + c), device) for c in it.choices]
        for it in items
    ]
    t2 = time.perf_counter()
    diff = max(abs(a - b) for f, s in zip(fast, slow, strict=True) for a, b in zip(f, s, strict=True))
    return len(items) / (t1 - t0), len(items) / (t2 - t1), diff


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
        fast, slow, diff = speed(model, tokenizer, items[: min(len(items), 30)], device)
        results[name].update(cached_items_per_s=fast, full_pass_items_per_s=slow, max_logprob_diff=diff)
        print(name, results[name], flush=True)
    rows = [
        [
            name,
            r["n"],
            f"{r['acc']:.3f} ± {r['acc_ci95']:.3f}",
            f"{r['acc_norm']:.3f} ± {r['acc_norm_ci95']:.3f}",
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
        "Intervals: 95% (1.96 standard errors). Items/s, both on the first 30 rows: one context pass "
        "and one batched pass over the choices from its cache (fl), against one full pass over context "
        "+ choice per choice; with the largest difference of a choice's log-probability between the two "
        "on those rows.\n\n"
        + md_table(["benchmark", "n", "acc", "acc_norm", "items/s (fl)", "items/s (full pass)", "max diff"], rows)
        + "\n\nNot yet here: lm-evaluation-harness on the same model folder and rows (issue 35).\n"
    )
    name = "llm-benchmarks" + ("-quick" if args.quick else "")
    data = {"model": loaded, "rows": args.rows, "shots": args.shots, "results": results}
    return write_report(
        "bench.llm_benchmarks", name, "SmolLM2 on the offline benchmarks", body, data, Path(args.out), argv
    )


if __name__ == "__main__":
    main()
