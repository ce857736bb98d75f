"""fl against lm-evaluation-harness on the same model folder and the same rows, in one sitting (issue 35).

Each benchmark's rows come from `fl.data.benchmarks.load_benchmark` and are written as a local JSONL
file and a local harness task (`output_type: multiple_choice`, `doc_to_text: "{{context}}"`,
`target_delimiter: " "`, `num_fewshot: 0`: MMLU's contexts already hold their k shots), so the
harness scores the text fl scores; every request it builds is checked against fl's context and
choices. Both in fp32 on the CPU: fl once (`load_causal_lm` + `score`, then each item's log-probs
again for the per-item check), the harness once per batch size (HFLM, loaded as `simple_evaluate`
loads `model="hf"` and timed apart, then `simple_evaluate` per benchmark with `log_samples`).

    pip install 'fl[bench]'   # lm-eval[hf]==0.4.13
    python -m bench.lm_eval_compare --limit 60 --batch-sizes 1,8,32

items/s: items over the seconds in the scoring itself (fl: `score`; harness: its `loglikelihood`,
tokenizing and batching included); each whole `simple_evaluate` call (task and dataset building
too) is in the JSON as harness_wall_s. Writes bench/reports/lm-eval-compare.md and .json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parent / "reports"
BENCHMARKS = "arc_easy,arc_challenge,hellaswag,piqa,openbookqa,mmlu"
INSTALL = "pip install 'fl[bench]'"


def write_task(folder: Path, bench: str, items: list[Any]) -> str:
    """`items` as <bench>.jsonl and a harness task YAML beside it; returns the task's name."""
    import yaml

    data = folder / f"{bench}.jsonl"
    with data.open("w") as f:
        for it in items:
            f.write(json.dumps({"context": it.context, "choices": list(it.choices), "gold": it.gold}) + "\n")
    task = f"fl_{bench}"
    config = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "num_fewshot": 0,
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": items[0].delimiter,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }
    (folder / f"{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return task


def run_fl(model_dir: str, rows: dict[str, list[Any]]) -> tuple[float, dict[str, Any], dict[str, list[list[float]]]]:
    """(load seconds, `score`'s result per benchmark, each item's choice log-probs per benchmark)."""
    import torch

    from fl.scoring import load_causal_lm, score
    from fl.tasks.choices import items_logprobs

    device = torch.device("cpu")
    t0 = time.perf_counter()
    model, tokenizer, _ = load_causal_lm(model_dir, device)
    load_s = time.perf_counter() - t0
    results = {b: score(model, tokenizer, items, device) for b, items in rows.items()}
    logprobs = {b: items_logprobs(model, tokenizer, items, device, 8) for b, items in rows.items()}
    return load_s, results, logprobs


def run_harness(model_args: str, tasks: dict[str, str], batch_size: int, manager: Any) -> tuple[float, dict[str, Any]]:
    """(model load seconds, per benchmark: acc, acc_norm, items/s, wall seconds, its samples) at one batch size."""
    import lm_eval
    from lm_eval.api.registry import get_model

    t0 = time.perf_counter()
    lm = get_model("hf").create_from_arg_string(model_args, {"batch_size": batch_size, "device": "cpu"})
    load_s = time.perf_counter() - t0
    spent = [0.0]
    inner = lm.loglikelihood

    def timed(requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        t = time.perf_counter()
        out = inner(requests, disable_tqdm=disable_tqdm)
        spent[0] += time.perf_counter() - t
        return out

    lm.loglikelihood = timed
    out: dict[str, Any] = {}
    for bench, task in tasks.items():
        spent[0], t = 0.0, time.perf_counter()
        res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, bootstrap_iters=0)
        wall = time.perf_counter() - t
        metrics, samples = res["results"][task], sorted(res["samples"][task], key=lambda s: s["doc_id"])
        out[bench] = {
            "acc": metrics["acc,none"],
            "acc_norm": metrics["acc_norm,none"],
            "items_per_s": len(samples) / spent[0],
            "harness_wall_s": wall,
            "samples": samples,
        }
    return load_s, out


def compare(items: list[Any], fl_lps: list[list[float]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per item: requests whose text differs from fl's, items whose acc or acc_norm pick differs, and the
    largest |fl - harness| of a choice's summed log-prob."""
    from fl.tasks.choices import pick

    text, picks, diff = 0, 0, 0.0
    for k, (it, lps, s) in enumerate(zip(items, fl_lps, samples, strict=True)):
        assert s["doc_id"] == k, f"harness doc {s['doc_id']} at position {k}"
        want = [(it.context, it.delimiter + c) for c in it.choices]
        text += [tuple(a) for a in s["arguments"]] != want
        theirs = [float(r[0]) if isinstance(r, list | tuple) else float(r) for r in s["filtered_resps"]]
        picks += pick(lps, it.choices) != pick(theirs, it.choices)
        diff = max(diff, *(abs(a - b) for a, b in zip(lps, theirs, strict=True)))
    return {"text_mismatches": text, "picks_differ": picks, "max_logprob_diff": diff}


def joined(values: list[float], fmt: str) -> str:
    """One value when all are equal, else each (one per batch size) joined by ' / '."""
    return format(values[0], fmt) if len(set(values)) == 1 else " / ".join(format(v, fmt) for v in values)


def table(doc: dict[str, Any]) -> str:
    """The comparison as a markdown table."""
    from bench.common import md_table

    sizes = doc["batch_sizes"]
    rows = []
    for bench, r in doc["results"].items():
        h = [r["harness"][str(b)] for b in sizes]
        best = max(x["items_per_s"] for x in h)
        rows.append(
            [
                bench,
                r["n"],
                f"{r['fl']['acc']:.3f} / {r['fl']['acc_norm']:.3f}",
                f"{joined([x['acc'] for x in h], '.3f')} / {joined([x['acc_norm'] for x in h], '.3f')}",
                joined([100 * (r["fl"]["acc"] - x["acc"]) for x in h], "+.1f"),
                joined([100 * (r["fl"]["acc_norm"] - x["acc_norm"]) for x in h], "+.1f"),
                f"{r['fl']['items_per_s']:.2f}",
                " / ".join(f"{x['items_per_s']:.2f}" for x in h),
                f"{r['fl']['items_per_s'] / best:.2f}",
                " / ".join(str(x["picks_differ"]) for x in h),
                " / ".join(f"{x['max_logprob_diff']:.1e}" for x in h),
            ]
        )
    bs = "bs " + "/".join(map(str, sizes))
    headers = ["benchmark", "n", "fl acc / acc_norm", "harness acc / acc_norm", "Δ acc (pts)", "Δ acc_norm (pts)"]
    headers += ["fl items/s", f"harness items/s ({bs})", "fl / harness-best", "picks differ", "max abs Δ logprob"]
    return md_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="causal LM: 'smollm2' or a model folder")
    ap.add_argument("--benchmarks", default=BENCHMARKS, help="comma-separated")
    ap.add_argument("--limit", type=int, default=100, help="seeded rows per benchmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mmlu-shots", type=int, default=5, help="MMLU dev shots (in fl's contexts)")
    ap.add_argument("--batch-sizes", default="1,8", help="the harness's batch sizes, comma-separated")
    ap.add_argument("--out", default=str(REPORTS), help="report folder (lm-eval-compare.md and .json)")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("lm_eval") is None:
        print(f"bench.lm_eval_compare: lm-evaluation-harness is not installed; {INSTALL}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder and local JSON: nothing to fetch
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    import torch
    import transformers
    from lm_eval.tasks import TaskManager

    from bench.common import write_report
    from fl.data.benchmarks import Choice, load_benchmark
    from fl.models import resolve_model

    benches = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = {b: load_benchmark(b, args.limit, args.seed, args.mmlu_shots if b == "mmlu" else 0) for b in benches}
    if other := [b for b, items in rows.items() if not isinstance(items[0], Choice)]:
        ap.error(f"{', '.join(other)}: not multiple choice; this compares log-likelihood benchmarks only")
    model_dir = resolve_model(args.model)
    fl_load, fl_res, fl_lps = run_fl(model_dir, rows)
    results: dict[str, Any] = {b: {"n": len(rows[b]), "fl": fl_res[b], "harness": {}} for b in benches}
    harness_load: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fl-lmeval-") as tmp:
        tasks = {b: write_task(Path(tmp), b, items) for b, items in rows.items()}
        manager = TaskManager(include_path=tmp, include_defaults=False)
        for size in sizes:
            load_s, out = run_harness(f"pretrained={model_dir},dtype=float32", tasks, size, manager)
            harness_load[str(size)] = load_s
            for b, r in out.items():
                r.update(compare(rows[b], fl_lps[b], r.pop("samples")))
                results[b]["harness"][str(size)] = r
                print(b, f"bs={size}", " ".join(f"{k}={v:.4g}" for k, v in r.items()), flush=True)
    doc = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lm_eval": importlib.metadata.version("lm_eval"),
        },
        "model": model_dir,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "limit": args.limit,
        "seed": args.seed,
        "mmlu_shots": args.mmlu_shots,
        "batch_sizes": sizes,
        "fl_load_s": fl_load,
        "harness_load_s": harness_load,
        "results": results,
    }
    md = table(doc)
    print(md)
    body = (
        f"{model_dir} in fp32 on {doc['threads']} threads, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, lm-eval {doc['versions']['lm_eval']}: {args.limit} seeded rows (seed "
        f"{args.seed}) of each benchmark, MMLU with {args.mmlu_shots} dev shots, the same texts in both (fl's "
        "items written as a local harness task; every request the harness builds checked against them). fl: "
        "`fl.scoring.score` (8 items a pass, longest first, each choice from its context's cache); the harness: "
        "HFLM at each batch size. items/s: the scoring alone, model load apart (fl "
        f"{fl_load:.1f} s). Picks differ: items whose acc / acc_norm choice differs; max abs Δ logprob: the "
        "largest difference of a choice's summed log-probability.\n\n" + md + "\n"
    )
    write_report(
        "bench.lm_eval_compare", "lm-eval-compare", "fl against lm-evaluation-harness", body, doc, Path(args.out), argv
    )
    return doc


if __name__ == "__main__":
    main()
