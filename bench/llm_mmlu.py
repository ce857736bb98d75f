"""Federated tuning in FlowerTune's general-NLP shape, offline (`recipes/llm-mmlu.yaml`): does it move
SmolLM2-135M-Instruct's MMLU score beyond its interval? And `fl eval` of the sentiment recipe's
exported adapter on the benchmarks, beside the base model's scores on the same rows.

    python -m bench.llm_mmlu                     # both runs under torchrun (3 processes), ~25 min on 2 cores
    python -m bench.llm_mmlu --skip-sentiment    # the MMLU recipe only, ~10 min

Writes bench/reports/llm-mmlu.md, .json and .png (test_mmlu_acc and test_accuracy per round).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from bench.common import RUNS, md_table, run_torchrun, write_report

EVAL_BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa", "mmlu")


def difference(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[float, float]:
    """(b - a, half-width of its 95% interval) of a score on the same n rows: the unpaired interval
    (sqrt of the two variances summed), wider than a paired test's, so a change beyond it is real."""
    n = a[f"{key}_n"]
    pa, pb = a[f"{key}_acc"], b[f"{key}_acc"]
    half = 1.96 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / (n - 1))
    return pb - pa, half


def mmlu_section(doc: dict[str, Any], out: Path) -> tuple[str, dict[str, Any]]:
    """The recipe's per-round table, figure and verdict."""
    from fl.output.plots import plot_rounds

    rounds = doc["rounds"]
    rows = [
        [
            r["round"],
            f"{r['test_mmlu_acc']:.3f} ± {r['test_mmlu_acc_ci95']:.3f}",
            f"{r['test_accuracy']:.3f}",
            f"{r['test_loss']:.4f}",
            "-" if r.get("train_loss") is None else f"{r['train_loss']:.4f}",
            f"{r['time_s']:.0f}",
        ]
        for r in rounds
    ]
    delta, half = difference(rounds[0], rounds[-1], "test_mmlu")
    verdict = "beyond" if abs(delta) > half else "within"
    figure = plot_rounds({"FedLoRA, 4 category clients": rounds}, ["test_mmlu_acc", "test_accuracy"], out)
    n = int(rounds[0]["test_mmlu_n"])
    text = (
        f"`recipes/llm-mmlu.yaml` under torchrun (3 processes: rank 0 aggregates, 2 client ranks), "
        f"{doc['wall_s']:.0f} s wall from launch to exit. test_mmlu_acc: {n} seeded MMLU test rows (seed 0), "
        "0-shot, the letter by log-likelihood (lm-evaluation-harness's prompt), with its 95% interval; "
        "test_accuracy: the generated letter on the task's 100 other test rows in the training prompt's chat "
        "format. Rows left out of training for a prompt longer than max_length: "
        f"{doc.get('data_notes', {}).get('skipped_rows', {})}.\n\n"
        + md_table(["round", "test_mmlu_acc", "test_accuracy", "test_loss", "train_loss", "time_s"], rows)
        + f"\n\nRound {rounds[-1]['round']} against round 0 on MMLU: {delta:+.3f}, 95% interval of the "
        f"difference ± {half:.3f} (unpaired, conservative): the change is **{verdict}** its interval.\n\n"
        f"![per round]({figure.name})\n"
    )
    return text, {"rounds": rounds, "delta": delta, "delta_ci95": half, "wall_s": doc["wall_s"]}


def sentiment_section(rows: int) -> tuple[str, dict[str, Any]]:
    """`recipes/llm-sentiment.yaml` under torchrun, then `fl eval` of its adapter and of the base."""
    from fl.scoring import evaluate

    run_dir = RUNS / "llm-mmlu" / "sentiment"
    doc = run_torchrun(
        "llm-sentiment.yaml", [f"output_dir={run_dir.parent}", "run_name=sentiment", "overwrite=true"], 3, run_dir
    )
    tuned = evaluate(str(run_dir), EVAL_BENCHMARKS, limit=rows)
    base = evaluate("smollm2", EVAL_BENCHMARKS, limit=rows)
    table = [
        [
            b,
            base["results"][b]["n"],
            f"{base['results'][b]['acc']:.3f} ± {base['results'][b]['acc_ci95']:.3f}",
            f"{tuned['results'][b]['acc']:.3f} ± {tuned['results'][b]['acc_ci95']:.3f}",
            f"{base['results'][b]['acc_norm']:.3f}",
            f"{tuned['results'][b]['acc_norm']:.3f}",
        ]
        for b in EVAL_BENCHMARKS
    ]
    text = (
        f"`recipes/llm-sentiment.yaml` under torchrun (final test_accuracy "
        f"{doc['rounds'][-1]['test_accuracy']:.3f}), then `fl eval {run_dir.name}/` (its exported adapter on "
        f"its base) and `fl eval smollm2` on the same {rows} seeded rows of each benchmark (MMLU 0-shot), fp32:\n\n"
        + md_table(
            ["benchmark", "n", "acc, base", "acc, sentiment adapter", "acc_norm, base", "acc_norm, adapter"], table
        )
        + "\n"
    )
    return text, {"sentiment_run": doc["rounds"], "base": base, "tuned": tuned}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "reports"), help="report folder")
    ap.add_argument("--rows", type=int, default=100, help="rows per benchmark for the adapter's fl eval")
    ap.add_argument("--skip-sentiment", action="store_true", help="the MMLU recipe only")
    args = ap.parse_args(argv)
    out = Path(args.out)
    run_dir = RUNS / "llm-mmlu" / "mmlu"
    doc = run_torchrun("llm-mmlu.yaml", [f"output_dir={run_dir.parent}", "run_name=mmlu", "overwrite=true"], 3, run_dir)
    body, data = mmlu_section(doc, out / "llm-mmlu.png")
    if not args.skip_sentiment:
        text, more = sentiment_section(args.rows)
        body += "\n## fl eval of the sentiment recipe's adapter\n\n" + text
        data.update(more)
    title = "Federated tuning in FlowerTune's general-NLP shape, and fl eval of an adapter"
    return write_report("bench.llm_mmlu", "llm-mmlu", title, body, data, out, argv)


if __name__ == "__main__":
    main()
