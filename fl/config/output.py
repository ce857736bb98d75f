"""The `output` section of the config. What a run writes and who watches it: the run folder,
checkpoints, resume, the exported model, trackers and callbacks; a resume may change any of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fl.config.components import validate
from fl.config.fields import BIG
from fl.config.fields import config_field as _f
from fl.errors import ConfigError


@dataclass
class OutputSection:
    """What a run writes and who watches it: the run folder, checkpoints, resume, the exported model,
    trackers and callbacks; a resume may change any of it.
    """

    SECTION = "output"

    output_dir: str = _f("results", "folder that receives <run_name>/", effect="output")
    run_name: str | None = _f(None, "subfolder of output_dir; unset: <scheme>-<task>-seed<seed>", effect="output")
    overwrite: bool = _f(
        False,
        "true: replace the results and checkpoints of an existing run folder (otherwise that is refused)",
        effect="output",
    )
    resume: str = _f(
        "false",
        "true: continue from this run's newest checkpoint (fresh start if none); or a checkpoint path",
        effect="output",
    )
    checkpoint_every: int = _f(
        1, "write a checkpoint every N rounds (0: never); the last round always", lo=0, hi=BIG, effect="output"
    )
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep", lo=1, hi=BIG, effect="output")
    save_model: bool = _f(True, "save the final global model (adapter/ or model/)", effect="output")
    log_to: str = _f(
        "none",
        "track every round's record on rank 0: tensorboard (<run>/tensorboard) or wandb",
        ("none", "tensorboard", "wandb"),
        effect="output",
    )
    callbacks: list = _f(
        [],
        "rank 0's callbacks, e.g. [{_component_: early_stopping, metric: test_accuracy, patience: 2}]",
        effect="output",
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        if not self.output_dir.strip():
            raise ConfigError("output_dir is empty; give a value (see `fl run --help`)")
        if self.run_name is not None and (
            not re.fullmatch(r"[A-Za-z0-9._-]+", self.run_name) or self.run_name.startswith(".")
        ):
            raise ConfigError(
                f"run_name={self.run_name!r} may hold only letters, digits, '.', '_' and '-', and not start with '.'"
            )
        for i, spec in enumerate(self.callbacks):  # built on rank 0 in set-up
            validate(spec, f"callbacks[{i}]", "fl.output.callbacks:Callback")

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.scheme}-{self.task_name}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.resolved_run_name
