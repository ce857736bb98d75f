"""What a config field accepts: its metadata (help text, choices, numeric range, and what it
changes), the check of one value against it, and the parsers of the fields whose values have a
small syntax of their own. Nothing here knows the `Config` dataclass (`fl.config`), so every
section can use these.

A field's `effect` says what a different value changes: `results` (what the run computes: a resume
must keep it, `fl compare` shows it), `runtime` (where and how fast it computes: a resume may change
it, `fl compare` shows it) or `output` (what it writes and who watches: a resume may change it,
`fl compare` ignores it). `resumable=True` lets a results key change on resume (`rounds`: a resumed
run may go on for more rounds); `compared=False` keeps a runtime key out of `fl compare`'s labels
(the thread count, a timeout, test-only faults: they tell runs apart by nothing worth a label).
The checkpoint's and compare's key sets derive from these.
"""

from __future__ import annotations

import math
import re
from dataclasses import field
from typing import Any

from fl.errors import ConfigError

__all__ = ["BIG", "ConfigError", "check_field", "config_field", "parse_fault", "parse_ranks"]

BIG = 1_000_000_000  # upper bound of counts that only need to be "large"
EFFECTS = ("results", "runtime", "output")


def config_field(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    open_lo: bool = False,
    open_hi: bool = False,
    effect: str = "results",
    resumable: bool | None = None,
    compared: bool | None = None,
) -> Any:
    """A dataclass field with its help text, its kind (choices, or a numeric range) and its effect
    (see the module docstring); `resumable` defaults to `effect != "results"`, `compared` (whether
    `fl compare` names the key when runs differ in it) to `effect != "output"`."""
    assert effect in EFFECTS, effect
    meta = {
        "help": help,
        "choices": choices,
        "lo": lo,
        "hi": hi,
        "open_lo": open_lo,
        "open_hi": open_hi,
        "effect": effect,
        "resumable": effect != "results" if resumable is None else resumable,
        "compared": effect != "output" if compared is None else compared,
    }
    if isinstance(default, list):  # component lists (parts, callbacks): a fresh list per config
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


def unknown_key_message(key: str, known: list[str]) -> str:
    """`unknown config key 'lrr'; did you mean lr, ...?` (the close matches, else where to look)."""
    import difflib

    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `fl run --help`"
    return f"unknown config key {key!r}{hint}"


_PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}


def check_type(name: str, value: Any, annotation: str) -> Any:
    """`value` as the field's declared type (`'float'`, `'int | None'`, `'str | dict'`, ...): an int
    where a float is due becomes a float; anything else of another type is refused with one line
    (a string such as lr='1e-3' is not parsed here: recipes and key=value overrides are, in `fl.config.recipe`)."""
    names = [t.strip() for t in annotation.split("|")]
    if value is None and "None" in names:
        return None
    allowed = [_PY_TYPES[t] for t in names if t in _PY_TYPES]
    if "float" in names and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in allowed:  # bool is an int to Python, not to a config
        ok = False
    else:
        ok = any(isinstance(value, t) for t in allowed)
    if not ok:
        want = " or ".join(t for t in names if t != "None")
        raise ConfigError(
            f"{name}={value!r} is a {type(value).__name__}, not a {want}; pass a {want} "
            "(recipes and key=value overrides convert text for you)"
        )
    return value


def range_text(meta: dict) -> str:
    left = "(" if meta["open_lo"] else "["
    right = ")" if meta["open_hi"] else "]"
    lo = "-inf" if meta["lo"] is None else f"{meta['lo']:g}"
    hi = "inf" if meta["hi"] is None else f"{meta['hi']:g}"
    return f"{left}{lo}, {hi}{right}"


def check_field(name: str, value: Any, meta: dict) -> None:
    """One field against its kind: a listed choice, or a finite number in its range."""
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value} is not a finite number; give a value in {range_text(meta)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta["open_lo"] else value < lo)
    too_high = hi is not None and (value >= hi if meta["open_hi"] else value > hi)
    if too_low or too_high:
        raise ConfigError(f"{name}={value} is out of range; give a value in {range_text(meta)}")


def parse_ranks(spec: str, num_clients: int, global_rank: int) -> list[int]:
    """lora_ranks '8,8,4,2' -> one rank per client; a shorter list repeats (client c gets ranks[c % len])."""
    try:
        ranks = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"lora_ranks={spec!r} must be comma-separated integers, e.g. 8,8,4,2") from None
    if not ranks or min(ranks) < 1 or max(ranks) > global_rank:
        raise ValueError(f"lora_ranks={spec!r}: each rank must be in [1, lora_r={global_rank}]")
    return [ranks[c % len(ranks)] for c in range(num_clients)]


def parse_fault(spec: str) -> tuple[str, str, int, int | None]:
    """'nan:client=1:round=2' -> ('nan', 'client', 1, 2); round '*' -> None (every round)."""
    m = re.fullmatch(r"(nan|exit):(client|rank)=(\d+):round=(\d+|\*)", spec.strip())
    if not m or (m[1] == "nan") != (m[2] == "client"):
        raise ConfigError(f"fault_inject={spec!r} is not valid; use 'nan:client=C:round=R' or 'exit:rank=K:round=R'")
    return m[1], m[2], int(m[3]), None if m[4] == "*" else int(m[4])
