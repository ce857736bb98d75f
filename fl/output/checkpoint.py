"""Round checkpoints: safetensors for tensors, JSON for everything else, never pickle.

Layout: `<run_dir>/checkpoints/round-0007/{state.safetensors, meta.json}`. A checkpoint is written
into a temp folder, every file fsynced, then renamed into place, so a crash leaves either the old
set or the new one; `meta.json` is written last and marks a checkpoint complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fl import models
from fl.comm.message import Message
from fl.config import RESUMABLE_KEYS, Config
from fl.errors import ConfigError

# Keys a resumed run may change: how long it runs and where / how it writes, not what it computes.
STATE = "state.safetensors"
META = "meta.json"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path,
    round_idx: int,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int,
    mine: list[Path] | None = None,
) -> Path:
    """Write round `round_idx` atomically; of the checkpoints this run wrote (`mine`, updated in
    place), keep the newest `keep`. Checkpoints this run did not write are never touched."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"round-{round_idx:04d}", root / f".round-{round_idx:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, str(tmp / STATE))
    with open(tmp / META, "w") as fh:
        json.dump({"round": round_idx, **meta}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    with open(tmp / STATE, "rb") as fh:
        os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync_dir(root)
    mine = [] if mine is None else mine
    if final not in mine:
        mine.append(final)
    while len(mine) > keep:
        shutil.rmtree(mine.pop(0), ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (meta.json present), oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("round-*") if (p / META).is_file() and (p / STATE).is_file())


def find_resume_point(cfg: Config) -> Path | None:
    """The checkpoint to resume from: `resume=true` -> newest in this run (None if there is none
    yet, so an elastic restart of a job that never checkpointed starts fresh); `resume=<path>` ->
    that checkpoint folder, or the newest under that run folder."""
    if cfg.resume in ("false", ""):
        return None
    if cfg.resume == "true":
        found = complete_checkpoints(cfg.run_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if (path / META).is_file():
        return path
    found = complete_checkpoints(path)
    if not found:
        raise ConfigError(f"resume={cfg.resume!r} holds no complete checkpoint; give a checkpoints/round-* folder")
    return found[-1]


def load_checkpoint(path: Path, cfg: Config) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a checkpoint, refusing one written with a different config."""
    try:
        meta = json.loads((path / META).read_text())
        tensors = load_file(str(path / STATE))
    except Exception as err:  # OSError, JSON errors, safetensors' own error on a truncated file
        raise ConfigError(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}); resume from another"
        ) from None
    saved, now = meta.get("config", {}), cfg.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_KEYS and saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ[:4])
        raise ConfigError(f"checkpoint {str(path)!r} was written with another config: {shown}; resume with the same")
    return tensors, meta


def pack_state(
    global_state: dict[str, torch.Tensor],
    server: dict[str, torch.Tensor],
    clients: dict[int, dict[str, dict[str, torch.Tensor]]],
) -> dict[str, torch.Tensor]:
    """The checkpoint's key layout: `global.<tensor>`, `server.<part>.<tensor>` (the strategy's state,
    already prefixed by part), `client.<c>.<part>.<tensor>` (every client's own state, by part)."""
    tensors = with_prefix(global_state, "global")
    tensors.update(with_prefix(server, "server"))
    for c, parts in clients.items():
        tensors.update({f"client.{c}.{p}.{k}": v for p, part in parts.items() for k, v in part.items()})
    return tensors


def unpack_state(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict, dict[int, dict[str, dict]]]:
    """`pack_state` undone: (global state, server state, client -> part -> state)."""
    clients: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for key, v in split_prefix(tensors, "client").items():
        c, part, name = key.split(".", 2)
        clients.setdefault(int(c), {}).setdefault(part, {})[name] = v
    return split_prefix(tensors, "global"), split_prefix(tensors, "server"), clients


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as flat tensors plus a JSON-able remainder (param_groups)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"{pid}.{name}"] = value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": extra["param_groups"]})


def restore(cfg: Config, path: Path | None, model: Any, strategy: Any, device: torch.device) -> tuple[int, list]:
    """Rank 0: load checkpoint `path` into the model and the strategy's parts (every client's own
    state too), every tensor onto `device`. Returns (first round to run, records so far); (1, [])
    for a fresh start."""
    if path is None:
        return 1, []
    tensors, meta = load_checkpoint(path, cfg)
    if int(meta["round"]) >= cfg.rounds:
        raise ConfigError(
            f"checkpoint {str(path)!r} has finished round {meta['round']} and rounds={cfg.rounds}; "
            f"raise rounds to continue, or start a new run"
        )
    names = [p.name for p in strategy.parts]
    if meta.get("part_names", names) != names:
        raise ConfigError(
            f"checkpoint {str(path)!r} was written by the parts {meta['part_names']}, this run has {names}; "
            "resume with the same parts"
        )
    global_state, server, clients = unpack_state(tensors)
    try:
        models.set_trainable_state(model, {k: v.to(device) for k, v in global_state.items()})
        strategy.load_state(server, meta.get("parts", {}), device)
        for c, parts in sorted(clients.items()):
            moved = {p: {k: v.to(device) for k, v in t.items()} for p, t in parts.items()}
            strategy.load_client_state(c, Message(moved))
    except ValueError as err:
        raise ConfigError(f"checkpoint {str(path)!r} does not fit this model ({err}); resume with its model") from None
    return int(meta["round"]) + 1, list(meta["records"])
