"""`fl compare RUN_DIR...`: runs side by side. One figure (a metric per round, one line per run,
labelled by the settings that differ between the runs) and a markdown table of final metrics,
time and bytes. The figure is drawn by `fl.output.plots`, the same code as the benchmarks' figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fl.config import COMPARE_IGNORED
from fl.errors import ConfigError
from fl.output.plots import plot_rounds


def load_run(run_dir: str) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir!r} holds no results.json; give run folders written by `fl run`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON; was the run written by fl?") from None
    if not doc.get("rounds"):
        raise ConfigError(f"{path} holds no rounds yet")
    return doc


def differing_settings(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run (what tells the runs apart)."""
    keys = sorted(set().union(*configs) - COMPARE_IGNORED)
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def labels(run_dirs: list[str], docs: list[dict[str, Any]]) -> list[str]:
    keys = differing_settings([d["config"] for d in docs])
    out = []
    for run_dir, doc in zip(run_dirs, docs, strict=True):
        text = ", ".join(f"{k}={doc['config'].get(k)}" for k in keys)
        out.append(text or Path(run_dir).name)
    if len(set(out)) < len(out):  # same settings: tell them apart by folder
        out = [f"{Path(d).name}: {t}" for d, t in zip(run_dirs, out, strict=True)]
    return out


def table(names: list[str], docs: list[dict[str, Any]], metric: str) -> str:
    """Markdown: final and best metric, final loss, total time, mean bytes per round."""

    def mean(doc: dict[str, Any], key: str) -> str:
        vals = [r.get(key) or 0 for r in doc["rounds"][1:]]
        return f"{sum(vals) / len(vals):,.0f}" if vals else "-"

    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    head = [
        "run",
        f"final {metric}",
        f"best {metric}",
        "final test_loss",
        "rounds",
        "total s",
        "bytes up / round",
        "bytes down / round",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, doc in zip(names, docs, strict=True):
        values = [r.get(metric) for r in doc["rounds"] if r.get(metric) is not None]
        last = doc["rounds"][-1]
        best = num(max(values) if values else None)
        cells = [
            name,
            num(last.get(metric)),
            best,
            num(last.get("test_loss")),
            str(last["round"]),
            num(doc.get("elapsed_s")),
            mean(doc, "bytes_up"),
            mean(doc, "bytes_down"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(run_dirs: list[str], metric: str = "test_accuracy", out: str | None = None) -> tuple[Path, str]:
    """Draw the figure and return (its path, the markdown table); the table is also written beside it."""
    if len(run_dirs) < 1:
        raise ConfigError("fl compare needs one or more run folders")
    docs = [load_run(d) for d in run_dirs]
    if not any(metric in r for d in docs for r in d["rounds"]):
        raise ConfigError(f"no run records {metric!r}; try --metric test_accuracy, test_mcc, test_loss or train_loss")
    names = labels(run_dirs, docs)
    path = Path(out) if out else Path("compare.png")
    plot_rounds(dict(zip(names, (d["rounds"] for d in docs), strict=True)), [metric], path, title="fl compare")
    md = table(names, docs, metric)
    path.with_suffix(".md").write_text(md)
    return path, md
