"""Recipes and overrides: YAML files and `key=value` strings turned into a `Config`.

A key may be written flat (`lr: 1e-3`, `lr=1e-3`) or in its section (`local: {lr: 1e-3}`,
`local.lr=1e-3`); `SECTION_OF` tells which section owns which key. Values are coerced to each
field's type; unknown keys, and keys named under a section that does not own them, are errors that
suggest the close matches.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from fl.config.fields import range_text, unknown_key_message
from fl.config.schema import SECTION_OF, SECTIONS, Config
from fl.errors import ConfigError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", "~", ""}


def _coerce(key: str, raw: Any, type_str: str) -> Any:
    """Turn a YAML value or override string into the field's type, or raise ConfigError."""
    optional = "None" in type_str
    base = type_str.replace("| None", "").replace("None |", "").strip()
    if base in ("list", "str | dict"):  # components: YAML structures (a key=value override is read as YAML)
        return _component_value(key, raw, base)
    if isinstance(raw, str) and raw.strip().lower() in _NONE and optional:
        return None
    if raw is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty; give a {base}")
    try:
        if base == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if base == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            if isinstance(raw, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", raw):
                raise ValueError
            return int(raw)
        if base == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if base == "str":
            if isinstance(raw, list | tuple):  # a YAML list for a comma-separated key
                return ",".join(str(x) for x in raw)
            if isinstance(raw, dict):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={raw!r} is not a valid {base}") from None
    raise ConfigError(f"{key}: unsupported field type {type_str}")  # pragma: no cover


def _component_value(key: str, raw: Any, base: str) -> Any:
    if isinstance(raw, str) and raw.strip()[:1] in ("[", "{"):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            hint = f"{key}=[{{_component_: my_module.MyPart}}]"
            raise ConfigError(f"{key}={raw!r} is not valid YAML; e.g. {hint}") from None
    if base == "list":
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ConfigError(f"{key} must be a list of components, e.g. [{{_component_: my_module.MyPart, arg: 1}}]")
        return raw
    return raw if isinstance(raw, dict) else str(raw)


def field_types() -> dict[str, str]:
    """Field name -> annotation string, e.g. {'lr': 'float', 'data_dir': 'str | None'}."""
    return {f.name: str(f.type) for f in dataclasses.fields(Config)}


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """Section mappings (`local: {lr: 1e-3}`) and dotted keys (`local.lr`) as flat keys (`lr`)."""
    sections = {s.SECTION for s in SECTIONS}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections and isinstance(value, dict):  # `model: {...}` is the section; `model: name` the key
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for name, v in items:
            section, dot, flat = str(name).rpartition(".")
            if dot and section not in sections:
                raise ConfigError(f"{name!r} names no section; sections are {', '.join(sorted(sections))}")
            if dot and SECTION_OF.get(flat, section) != section:
                owner = SECTION_OF[flat]
                raise ConfigError(f"{flat} belongs to section {owner}, not {section}; write {owner}.{flat}")
            out[flat if dot else name] = v
    return out


def build_config(values: dict[str, Any]) -> Config:
    """Make a Config from a mapping of flat or sectioned keys; unknown keys are errors that list the close matches."""
    values = flatten(values)
    types = field_types()
    unknown = [k for k in values if k not in types]
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0], list(types)))
    kwargs = {k: _coerce(k, v, types[k]) for k, v in values.items()}
    return Config(**kwargs)


def parse_overrides(items: typing.Sequence[str]) -> dict[str, str]:
    """['lr=1e-3', 'rounds=2'] -> {'lr': '1e-3', 'rounds': '2'}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into a flat mapping (an empty file is an empty recipe)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe {str(path)!r} is a folder; pass a YAML file in it, such as recipes/fedlora.yaml")
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found; pass a YAML file such as recipes/fedlora.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"recipe {str(path)!r} cannot be read ({err.strerror}); check its permissions") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of key: value lines")
    return data


def load_config(recipe: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Recipe YAML first, then `key=value` overrides on top (each flattened first, so an override of
    one key in a section leaves the recipe's other keys of that section alone)."""
    values = flatten(load_recipe(recipe)) if recipe is not None else {}
    values.update(flatten(parse_overrides(overrides)))
    return build_config(values)


def describe_keys() -> str:
    """The keys by section: name, default, choices, meaning (for `fl run --help`)."""
    lines = []
    for section in SECTIONS:
        lines.append(f"\n[{section.SECTION}] {' '.join((section.__doc__ or '').split())}")
        for f in dataclasses.fields(section):
            choices = f.metadata.get("choices")
            extra = f" {{{'|'.join(choices)}}}" if choices else ""
            rng = ""
            if f.metadata.get("lo") is not None or f.metadata.get("hi") is not None:
                rng = f" in {range_text(f.metadata)}"
            lines.append(f"  {f.name}={f.default!s}{extra}{rng}\n      {f.metadata['help']}")
    return "\n".join(lines)
