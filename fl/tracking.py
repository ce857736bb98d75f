"""Experiment tracking on rank 0: every per-round record (and each client's train loss) as scalars,
to TensorBoard (`log_to=tensorboard`, with torch.utils.tensorboard) or Weights & Biases
(`log_to=wandb`, offline mode respected through WANDB_MODE). Off by default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from fl.config import ConfigError

SKIP = {"round"}  # the step, not a scalar


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers, flat: per-client dicts become client_train_loss/<client>."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in SKIP or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    out[f"{key}/{sub}"] = float(v)
    return out


class TensorBoard:
    """Event files under <run_dir>/tensorboard (open with `tensorboard --logdir <run_dir>`)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log_to=tensorboard needs the tensorboard package; run `pip install tensorboard` (or fl[tensorboard])"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["round"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """One W&B run per fl run, in <run_dir>/wandb; WANDB_MODE=offline keeps it on disk."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ConfigError("log_to=wandb needs the wandb package; run `pip install wandb` (or fl[wandb])") from None
        self.run = wandb.init(project="fl", name=run_dir.name, dir=str(run_dir), config=config, reinit=True)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["round"])

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, run_dir: Path, config: dict[str, Any]) -> Tracker | None:
    """The tracker `log_to` names (None for none); a missing package is a one-line ConfigError."""
    if kind == "none":
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    return TensorBoard(run_dir, config) if kind == "tensorboard" else Wandb(run_dir, config)


def check_available(kind: str) -> None:
    """Before anything is written: is the package that `log_to` needs installed?"""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"log_to={kind} needs the {package} package; run `pip install {package}` (or fl[{package}])")
