"""The public API: `fl.run`, `fl.load_config` (re-exported by `fl/__init__.py`).

    import fl
    cfg = fl.load_config("recipes/fedlora.yaml", rounds=2, num_clients=3)
    result = fl.run(cfg, parts=[MyPart(mu=0.1)], callbacks=[fl.output.callbacks.EarlyStopping(patience=2)])
    result.records[-1]["test_accuracy"], result.state, result.model_path

The same script runs under torchrun (`torchrun --nproc_per_node=3 my_experiment.py`): every rank
calls `fl.run` with the same arguments; rank 0 aggregates, ranks 1..N train, as with
`torchrun -m fl run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl.config import Config
from fl.config.components import import_user_modules
from fl.config.recipe import build_config, flatten, load_recipe
from fl.errors import ConfigError
from fl.job import Result
from fl.job import run as run_job
from fl.output.callbacks import Callback
from fl.strategies.base import Part
from fl.tasks import Task


def load_config(recipe: str | Path | Mapping[str, Any] | None = None, /, **overrides: Any) -> Config:
    """A `Config` from a recipe YAML (or a mapping of keys), with keyword overrides on top; values are
    converted as a recipe's are. Raises `ConfigError` naming the key and the fix."""
    if recipe is None:
        values: dict[str, Any] = {}
    elif isinstance(recipe, Mapping):
        values = dict(recipe)
    elif isinstance(recipe, str | Path):
        values = load_recipe(recipe)
    else:
        raise ConfigError(f"load_config takes a recipe path or a mapping, not a {type(recipe).__name__}")
    return build_config({**flatten(values), **flatten(overrides)})  # a section override keeps the rest


def run(
    config: Config | str | Path | Mapping[str, Any],
    *,
    parts: Sequence[Part] = (),
    task: Task | None = None,
    callbacks: Sequence[Callback] = (),
) -> Result:
    """Run one federated experiment and return its `Result` (every rank; records on rank 0).

    `config`: a `Config`, a recipe path or a mapping; `parts`: your algorithm parts, after the config's
    (an `fl.strategies.Aggregator` replaces the mean); `task`: your task, instead of the config's;
    `callbacks`: rank 0's callbacks, after the config's. The packages of `FL_IMPORT` are imported
    first. Raises `ConfigError` for bad input (nothing written) and `RunStopped` for a run that
    stopped part-way (results.json says so; resume=true continues).
    """
    import_user_modules()
    cfg = config if isinstance(config, Config) else load_config(config)
    parts = [parts] if isinstance(parts, Part) else list(parts)  # one part or a list of them
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    return run_job(cfg, parts=parts, task=task, callbacks=callbacks)
