"""Run folders: checks before anything is written, and atomic saves (temp, fsync, rename) of
results, models and checkpoints' neighbours, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from fl.errors import ConfigError


def strict_json(obj: Any, where: str = "", found: list[str] | None = None) -> tuple[Any, list[str]]:
    """A copy with every NaN / Infinity replaced by null, and the paths where that happened
    (strict JSON parsers reject NaN and Infinity)."""
    found = [] if found is None else found
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or ".")
        return None, found
    if isinstance(obj, dict):
        return {k: strict_json(v, f"{where}.{k}" if where else str(k), found)[0] for k, v in obj.items()}, found
    if isinstance(obj, list | tuple):
        return [strict_json(v, f"{where}[{i}]", found)[0] for i, v in enumerate(obj)], found
    return obj, found


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write strict JSON so that readers see the old file or the new one, never a partial one.
    Non-finite numbers are written as null and listed under "non_finite_values"."""
    obj, found = strict_json(obj)
    if found and isinstance(obj, dict):
        obj["non_finite_values"] = found
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RUN_OUTPUTS = (
    "results.json",
    "checkpoints",
    "adapter",
    "model",
    "teacher",
    "student_base",
    "tensorboard",
    "teacher_metrics.json",
)


def check_output_dir(run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Fail early, before training: the run folder must be writable, and one that already holds
    a run's results is refused unless this run resumes it or overwrites it."""
    held = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if held and not (resume or overwrite):
        raise ConfigError(
            f"run folder {str(run_dir)!r} already holds a run ({', '.join(held)}); pass resume=true to continue it, "
            "overwrite=true to replace it, or another run_name"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"output_dir {str(run_dir.parent)!r} is not writable ({err.strerror}); pick another output_dir"
        ) from None


def clear_run_outputs(run_dir: Path) -> None:
    """overwrite=true: remove an earlier run's outputs (after every check has passed)."""
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def save_pretrained_atomic(model: torch.nn.Module, tokenizer: Any, final: Path) -> Path:
    """save_pretrained into a temp folder, then rename: a crash never leaves half a model."""
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
