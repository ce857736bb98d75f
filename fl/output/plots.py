"""Figures of per-round metrics: one module for `fl compare` and every `bench/` report.

matplotlib is imported only here, and only when a figure is drawn (it comes with the `dev`
extra, or `pip install matplotlib`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl.errors import ConfigError

Rounds = Sequence[Mapping[str, Any]]  # the "rounds" list of a results.json


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("drawing figures needs matplotlib; run `pip install matplotlib`") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(metric: str) -> str:
    return metric.replace("test_", "test ").replace("_", " ")


def plot_rounds(
    runs: Mapping[str, Rounds],
    metrics: Sequence[str],
    path: Path,
    title: str = "",
    dashed: Sequence[str] = (),
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """One panel per metric, one line per run (metric against round); `dashed` runs are references;
    `bands` adds a shaded min-max range per run for the first metric (several seeds)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, rounds in runs.items():
            pts = [(r["round"], r[metric]) for r in rounds if r.get(metric) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            line = ax.plot(xs, ys, "--" if name in dashed else "-", marker="o", markersize=3, label=name)
            if bands and name in bands and metric == metrics[0]:
                lo, hi = bands[name]
                ax.fill_between(xs, lo[: len(xs)], hi[: len(xs)], alpha=0.15, color=line[0].get_color())
        ax.set(xlabel="round", ylabel=label(metric), title=f"{title}: {label(metric)}" if title else label(metric))
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    if names and max(map(len, names)) > 40:  # long labels (fl compare's settings) go below the panels
        fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=8, frameon=False)
    elif names:
        axes[0][0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
