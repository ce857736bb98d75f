"""Components named in recipes: a user's part, task or callback, built from its dotted path.

The convention is torchtune's: a mapping whose `_component_` key names the object and whose other
keys are its keyword arguments,

    parts:
      - _component_: my_algos.Krum        # or my_algos:Krum (Flower's module:object), or a registry name
        f: 1
    task: {_component_: my_tasks.MultipleChoice, path: data.jsonl}
    callbacks: [{_component_: fl.output.callbacks.EarlyStopping, metric: test_accuracy, patience: 2}]

We chose `_component_` because a recipe is YAML: the arguments sit beside the name in one mapping,
and a recipe can name fl's own classes the same way (`fl.strategies.FedProx`). The value may be a
dotted path (`pkg.mod.Obj`), a `module:object` path (`pkg.mod:Obj.from_config`), or a short name
of fl's registry (`fedprox`, `median`, ...: `REGISTRY`). A bare string stands for `{_component_: it}`.

The working directory is importable (as for torchtune), and `fl run --import PKG` or the
`FL_IMPORT` environment variable (comma-separated; torchrun passes it to every rank) imports user
packages (installed, on PYTHONPATH or under the working directory) on every rank before set-up,
for what their import does (registering, patching). A callable whose signature takes `config`
receives the run's `Config`. Every failure is a `ConfigError` that names the recipe key and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

from fl.errors import ConfigError

KEY = "_component_"
IMPORT_ENV = "FL_IMPORT"

# fl's own components by short name: recipes may use these, and the flat keys resolve through them
REGISTRY = {
    # aggregators (the first part of every strategy)
    "mean": "fl.strategies.aggregate:MeanAggregation",
    "median": "fl.strategies.aggregate:RobustAggregation.median",
    "trimmed_mean": "fl.strategies.aggregate:RobustAggregation.trimmed",
    "dp": "fl.strategies.privacy:PrivateAggregation.from_config",
    # server optimizers and the parts that follow them
    "server_optimizer": "fl.strategies.server_opt:ServerOptimizer.from_config",
    "fedprox": "fl.strategies.fedprox:FedProx",
    "lora": "fl.strategies.lora_agg:LoraAggregator.from_config",
    "scaffold": "fl.strategies.scaffold:Scaffold.from_config",
    "feddyn": "fl.strategies.feddyn:FedDyn.from_config",
    "compression": "fl.strategies.compression:Compression.from_config",
    "distillation": "fl.kd.part:Distillation.from_config",
    # tasks, by task_kind
    "classify": "fl.tasks.classify:ClassifyTask.from_config",
    "causal_lm": "fl.tasks.causal_lm:CausalLMTask.from_config",
    # callbacks
    "tensorboard": "fl.output.tracking:TensorBoard",
    "wandb": "fl.output.tracking:Wandb",
    "early_stopping": "fl.output.callbacks:EarlyStopping",
}


def import_user_modules(names: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Import the user's packages (`names`, else `FL_IMPORT`), with the working directory importable;
    returns what was imported. Under torchrun, set `FL_IMPORT` so that every rank imports them."""
    ensure_cwd_importable()
    if names is None:
        names = os.environ.get(IMPORT_ENV, "")
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name.strip())
        except ImportError as err:
            raise ConfigError(
                f"--import {name.strip()}: {err}; make the package importable (pip install -e it, or run from "
                "the folder that holds it)"
            ) from None
    return [n.strip() for n in names]


def ensure_cwd_importable() -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def spec_of(value: Any, key: str) -> tuple[str, dict[str, Any]]:
    """(path, keyword arguments) of a component spec: a mapping with `_component_`, or a bare path."""
    if isinstance(value, str) and value.strip():
        return value.strip(), {}
    if isinstance(value, Mapping) and isinstance(value.get(KEY), str) and value[KEY].strip():
        return value[KEY].strip(), {k: v for k, v in value.items() if k != KEY}
    raise ConfigError(
        f"{key}: {value!r} is not a component; give a mapping such as {{_component_: my_module.MyClass, arg: 1}} "
        "or a dotted path"
    )


def resolve(path: str, key: str) -> Any:
    """The object a path names: a registry name, `pkg.mod.Obj`, or `pkg.mod:Obj.attr`."""
    path = REGISTRY.get(path, path)
    ensure_cwd_importable()
    if ":" in path:
        module_name, _, attrs = path.partition(":")
        chain = attrs.split(".")
        if not module_name or not all(chain):
            raise ConfigError(f"{key}: {path!r} is not a path; write module.Object or module:Object")
    else:  # the longest importable prefix is the module, the rest attributes
        parts = path.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            if _importable(".".join(parts[:cut])):
                module_name, chain = ".".join(parts[:cut]), parts[cut:]
                break
        else:
            what = "is a module, not a class or function" if _importable(path) else "names no module"
            raise ConfigError(
                f"{key}: {path!r} {what}; give module.Object (check the spelling, run from the folder that holds "
                "your module, or make it importable)"
            )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import {module_name!r} for {path!r} ({err}); check the path") from None
    except Exception as err:  # the user's module itself fails (a SyntaxError, an error at import)
        raise ConfigError(f"{key}: importing {module_name!r} failed: {type(err).__name__}: {err}") from None
    for attr in chain:
        if not hasattr(obj, attr):
            raise ConfigError(f"{key}: {module_name!r} has no {'.'.join(chain)!r} (from {path!r}); check the name")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ConfigError(f"{key}: {path!r} is a {type(obj).__name__}, not a class or function; name a class")
    return obj


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:  # a parent package that fails to import: resolve() reports it when it imports
        return False


def check_arguments(target: Any, kwargs: dict[str, Any], key: str, path: str) -> None:
    """Refuse keyword arguments the target does not take (or required ones left out), naming them."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    params = dict(sig.parameters)
    takes = ", ".join(n for n, p in params.items() if n not in ("self", "config") and p.kind != p.VAR_KEYWORD)
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        extra = [k for k in kwargs if k not in params or k == "config"]
        if extra:
            raise ConfigError(f"{key}: {path} takes no argument {extra[0]!r}; it takes: {takes or 'no arguments'}")
    if "config" in params and "config" not in kwargs:
        kwargs = {**kwargs, "config": None}
    try:
        sig.bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{key}: {path} {err}; it takes: {takes or 'no arguments'}") from None


def validate(value: Any, key: str, kind: str | None = None) -> None:
    """Import the component, check its arguments and, when it is a class, that it is a `kind` (a
    `module:Class` path, imported only then): at config time, before any process works."""
    path, kwargs = spec_of(value, key)
    target = resolve(path, key)
    check_arguments(target, kwargs, key, path)
    if kind is not None and inspect.isclass(target):
        want = resolve(kind, key)
        if not issubclass(target, want):
            raise ConfigError(f"{key}: {path} is not an fl.{want.__name__}; name a subclass of fl.{want.__name__}")


def instantiate(value: Any, key: str, kind: type | tuple[type, ...] | None = None, config: Any = None) -> Any:
    """Build a component: `target(**kwargs)`, with `config=` where the target takes it; an object that
    is not of `kind` (a Part, a Callback, ...) is refused. Any other error is the component's own."""
    path, kwargs = spec_of(value, key)
    target = resolve(path, key)
    check_arguments(target, kwargs, key, path)
    if "config" in _parameters(target) and "config" not in kwargs:
        kwargs["config"] = config
    try:
        obj = target(**kwargs)
    except (ValueError, TypeError) as err:  # a value the component refuses: one line naming the key
        if isinstance(err, ConfigError):
            raise
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}: {path}: {text}") from None
    if kind is not None and not isinstance(obj, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ConfigError(f"{key}: {path} built a {type(obj).__name__}, not a {names}; name a subclass of fl.{names}")
    return obj


def _parameters(target: Any) -> dict[str, Any]:
    try:
        return dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}


def short_name(value: Any) -> str:
    """A component's last name (for run names): `my_tasks.MultipleChoice` -> MultipleChoice."""
    path, _ = spec_of(value, "task")
    return path.replace(":", ".").split(".")[-1] or "custom"
