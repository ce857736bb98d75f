"""Experiment tracking on rank 0, as callbacks (`fl.output.callbacks`): every per-round record (and each
client's train loss) as scalars, to TensorBoard (`log_to=tensorboard`, with
torch.utils.tensorboard) or Weights & Biases (`log_to=wandb`, offline mode respected through
WANDB_MODE). Off by default; `callbacks: [{_component_: tensorboard}]` is the same as log_to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fl.errors import ConfigError
from fl.output.callbacks import Callback, RunInfo

SKIP = {"round"}  # the step, not a scalar


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


class TensorBoard(Callback):
    """Event files under <run_dir>/tensorboard (open with `tensorboard --logdir <run_dir>`)."""

    def __init__(self) -> None:
        check_available("tensorboard")
        self.writer: Any = None

    def on_train_begin(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        run.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"))
        config = run.config.to_dict()
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)

    def on_log(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in scalars(dict(record)).items():
            self.writer.add_scalar(key, value, record["round"])
        self.writer.flush()

    def on_train_end(self, run: RunInfo, doc: Mapping[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Wandb(Callback):
    """One W&B run per fl run, in <run_dir>/wandb; WANDB_MODE=offline keeps it on disk."""

    def __init__(self, project: str = "fl") -> None:
        check_available("wandb")
        self.project = project
        self.run: Any = None

    def on_train_begin(self, run: RunInfo) -> None:
        import wandb

        run.run_dir.mkdir(parents=True, exist_ok=True)
        name, config = run.run_dir.name, run.config.to_dict()
        self.run = wandb.init(project=self.project, name=name, dir=str(run.run_dir), config=config, reinit=True)

    def on_log(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(scalars(dict(record)), step=record["round"])

    def on_train_end(self, run: RunInfo, doc: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def tracker(kind: str) -> Callback | None:
    """The tracker callback `log_to` names (None for none); a missing package is a one-line ConfigError."""
    if kind == "none":
        return None
    return TensorBoard() if kind == "tensorboard" else Wandb()


def check_available(kind: str) -> None:
    """Before anything is written: is the package that `log_to` needs installed?"""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"log_to={kind} needs the {package} package; run `pip install {package}` (or fl[{package}])")
