"""fl: federated fine-tuning of language models in plain PyTorch, as a library and a CLI.

    import fl
    result = fl.run(fl.load_config("recipes/fedlora.yaml", rounds=2), parts=[MyPart()])

Public names: `run`, `load_config`, `evaluate`, `Config`, `Result`, `Part`, `ClientTerm`, `Task`, `Callback`,
`EarlyStopping`, `ConfigError`, `RunStopped` (docs/extending.md). The rooms are sub-packages
(`fl.config`, `fl.comm`, `fl.data`, `fl.models`, `fl.tasks`, `fl.strategies`, `fl.client`, `fl.kd`,
`fl.output`); `fl/callbacks.py` and `fl/components.py` re-export what lived there before. They are
imported on first use, so `import fl` stays light (the CLI's `--help` does not load torch).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "run": "fl.api",
    "load_config": "fl.api",
    "evaluate": "fl.scoring",
    "Config": "fl.config",
    "Result": "fl.job",
    "Part": "fl.strategies.base",
    "ClientTerm": "fl.strategies.base",
    "Task": "fl.tasks",
    "Callback": "fl.output.callbacks",
    "EarlyStopping": "fl.output.callbacks",
    "ConfigError": "fl.errors",
    "RunStopped": "fl.errors",
}
__all__ = [
    "Callback",
    "ClientTerm",
    "Config",
    "ConfigError",
    "EarlyStopping",
    "Part",
    "Result",
    "RunStopped",
    "Task",
    "evaluate",
    "load_config",
    "run",
]

if TYPE_CHECKING:
    from fl.api import load_config, run
    from fl.config import Config
    from fl.errors import ConfigError, RunStopped
    from fl.job import Result
    from fl.output.callbacks import Callback, EarlyStopping
    from fl.scoring import evaluate
    from fl.strategies.base import ClientTerm, Part
    from fl.tasks import Task


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"fl.{name}") is not None:  # a submodule: fl.output.callbacks, fl.strategies, ...
        return importlib.import_module(f"fl.{name}")
    raise AttributeError(f"module 'fl' has no attribute {name!r}")
