"""What a config field accepts: its metadata (help text, choices, numeric range), the check of one
value against it, and the parsers of the fields whose values have a small syntax of their own.
Nothing here knows the `Config` dataclass (`fl.config`), so every room can use these.
"""

from __future__ import annotations

import math
import re
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A bad recipe, key, value or input file; the message names the problem and the fix.

    `quiet=True` marks a copy of an error that another rank already printed.
    """

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def config_field(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    open_lo: bool = False,
    open_hi: bool = False,
) -> Any:
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "open_lo": open_lo, "open_hi": open_hi}
    return field(default=default, metadata=meta)


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
