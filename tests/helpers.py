"""Helpers the tests share (fixtures live in `conftest.py`): the repository's paths, a real
torchrun job, N gloo processes in this machine (what torchrun would start), and the federation
replayed by hand.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from fl import comm, models
from fl.client.train import LocalSchedule, client_seed, train_local
from fl.setup import prepare

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fedlora.yaml"
ROUND_KEYS = {
    "round",
    "test_loss",
    "test_accuracy",
    "test_mcc",
    "test_f1",
    "train_loss",
    "time_s",
    "bytes_up",
    "bytes_down",
}


def run_torchrun(nproc: int, overrides: list[str], recipe: Path = RECIPE) -> subprocess.CompletedProcess:
    return torchrun_fl(nproc, ["run", str(recipe), *overrides])


def torchrun_fl(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    """`fl ARGS...` under torchrun with nproc processes (its log kept in /tmp when it fails)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "fl", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    if proc.returncode != 0:  # keep the whole log: torchrun's summary alone hides the cause
        Path("/tmp/fl-torchrun-failure.log").write_text(proc.stdout + proc.stderr)
    return proc


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def hand_rounds(cfg, rounds: int, skip: frozenset[int] = frozenset()) -> list[dict[str, torch.Tensor]]:
    """Replay the federation in this process: train each client from the global state, then take
    sum_i n_i * theta_i / sum_i n_i written out by hand. Returns the global state after each round."""
    torch.set_num_threads(1)
    s = prepare(cfg, comm.Runtime())
    enc = {c: s.task.encode(s.tokenizer, s.task.train.subset(s.shards[c])) for c in range(cfg.num_clients)}
    glob = {k: v.detach().clone() for k, v in models.get_trainable_state(s.model).items()}
    history = []
    for r in range(1, rounds + 1):
        sent = []
        for c in range(cfg.num_clients):
            if c in skip:  # a client whose update the server leaves out
                continue
            models.set_trainable_state(s.model, glob)
            schedule = LocalSchedule(cfg.lr, cfg.local_epochs, cfg.batch_size)
            seed = client_seed(cfg.seed, r, c)
            res = train_local(s.model, s.task, enc[c], schedule, seed=seed, device=torch.device("cpu"))
            sent.append(
                (res.num_examples, {k: v.detach().clone() for k, v in models.get_trainable_state(s.model).items()})
            )
        total = sum(n for n, _ in sent)
        glob = {k: sum(n * st[k] for n, st in sent) / total for k in glob}
        history.append(glob)
    return history


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    fn(rank, *args)


def spawn(fn, world: int, *args) -> None:
    """fn(rank, *args) on `world` processes; raises if any of them fails."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def run_inprocess(overrides: list[str], recipe: Path = RECIPE) -> dict:
    """The same job in this process (the simulation: one process plays every part, with the same
    seeds and arithmetic as torchrun); its results document."""
    from fl.config.recipe import load_config
    from fl.job import run_document

    return run_document(load_config(recipe, overrides))


def whole_and_resumed(overrides: list[str], out_dir: Path, recipe: Path = RECIPE) -> tuple[dict, dict]:
    """In this process: 3 rounds in `whole`; 2 rounds in `cut`, then `cut` resumed to 3 from its
    checkpoint. Returns the two results documents (the resumed one went on from round 2's checkpoint)."""
    over = [o for o in overrides if not o.startswith(("rounds=", "run_name=", "output_dir="))]
    over.append(f"output_dir={out_dir}")
    whole = run_inprocess([*over, "rounds=3", "run_name=whole"], recipe)
    run_inprocess([*over, "rounds=2", "run_name=cut"], recipe)
    resumed = run_inprocess([*over, "rounds=3", "run_name=cut", "resume=true"], recipe)
    assert resumed["resumed_from"].endswith("round-0002")  # it went on from the checkpoint, not from scratch
    return whole, resumed
