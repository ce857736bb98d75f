"""Split example indices among clients: `(labels, n, seed) -> list[list[int]]`.

Pure functions over plain lists, no datasets or torch, so they are easy to test. Every
partition is disjoint and covers every index; each client gets at least one example.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from fl.errors import ConfigError


def public_split(num_examples: int, pct: float) -> tuple[range, range]:
    """First `pct`% of train is the public slice (as in the original work); the rest is private."""
    cut = int(num_examples * pct / 100.0)
    return range(0, cut), range(cut, num_examples)


def contiguous(labels: Sequence[int], num_clients: int, seed: int = 0) -> list[list[int]]:
    """Consecutive shards of near-equal size, in data order (the original work's split)."""
    _check(len(labels), num_clients)
    n = len(labels)
    bounds = [n * c // num_clients for c in range(num_clients + 1)]
    return [list(range(bounds[c], bounds[c + 1])) for c in range(num_clients)]


def iid(labels: Sequence[int], num_clients: int, seed: int = 0) -> list[list[int]]:
    """A seeded shuffle cut into near-equal shards."""
    _check(len(labels), num_clients)
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    n = len(order)
    bounds = [n * c // num_clients for c in range(num_clients + 1)]
    return [sorted(order[bounds[c] : bounds[c + 1]]) for c in range(num_clients)]


def dirichlet(labels: Sequence[int], num_clients: int, seed: int = 0, alpha: float = 0.5) -> list[list[int]]:
    """Label skew: for each label, client shares are drawn from Dirichlet(alpha).

    Smaller alpha gives more skew. A client left empty by the draw takes one example from the
    largest client, so that every client can train.
    """
    _check(len(labels), num_clients)
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(int(y), []).append(i)
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    for y in sorted(by_label):
        idx = by_label[y]
        rng.shuffle(idx)
        weights = [rng.gammavariate(alpha, 1.0) for _ in range(num_clients)]
        total = sum(weights) or 1.0
        # cumulative cut points: shares proportional to the Dirichlet draw
        acc, cuts = 0.0, []
        for w in weights[:-1]:
            acc += w / total
            cuts.append(int(round(acc * len(idx))))
        start = 0
        for c, end in enumerate(cuts + [len(idx)]):
            shards[c].extend(idx[start:end])
            start = end
    for c in range(num_clients):
        if not shards[c]:
            donor = max(range(num_clients), key=lambda k: len(shards[k]))
            shards[c].append(shards[donor].pop())
    return [sorted(s) for s in shards]


def natural(groups: Sequence[str], num_clients: int) -> list[list[int]]:
    """The rows' own groups (e.g. the play a block comes from), in order of first appearance, dealt
    round-robin: group g goes to client g % num_clients. Every client needs a group."""
    order = list(dict.fromkeys(groups))
    if len(order) < num_clients:
        raise ValueError(
            f"partition=natural: the data has {len(order)} groups for num_clients={num_clients}; "
            f"lower num_clients to {len(order)} or fewer, or add groups"
        )
    client = {g: i % num_clients for i, g in enumerate(order)}
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    for i, g in enumerate(groups):
        shards[client[g]].append(i)
    return shards


def partition(labels: Sequence[int], num_clients: int, method: str, seed: int, alpha: float = 0.5) -> list[list[int]]:
    """Dispatch by name: contiguous | iid | dirichlet (natural splits by groups: `natural`)."""
    if method == "contiguous":
        return contiguous(labels, num_clients, seed)
    if method == "iid":
        return iid(labels, num_clients, seed)
    if method == "dirichlet":
        return dirichlet(labels, num_clients, seed, alpha)
    raise ValueError(f"partition={method!r} is not valid; choose contiguous, iid or dirichlet")


def _check(num_examples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be at least 1")
    if num_examples < num_clients:
        raise ValueError(
            f"{num_examples} client training examples cannot be split among {num_clients} clients; "
            "lower num_clients or teacher_data_pct, or raise max_train_samples"
        )


SETUP_LIMIT_S = 120.0  # data-dependent set-up loops (partitioning) must finish within this


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """A watchdog: raise ConfigError if the block runs longer than `seconds` (main thread only;
    elsewhere the block runs unguarded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise ConfigError(f"{what} did not finish in {seconds:g} s; check the settings that drive it")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def split_clients(cfg: Any, task: Any) -> tuple[int, list[list[int]]]:
    """(public slice size, client -> train indices): the public slice first, the rest partitioned by
    `cfg.partition` (the task gives its rows' labels and groups); a ConfigError names what does not fit."""
    public, private = public_split(len(task.train), cfg.public_pct)
    labels = task.partition_labels(private)
    if labels is None and cfg.partition == "dirichlet":
        raise ConfigError("partition=dirichlet splits by label and this task has none; use contiguous or iid")
    groups = task.partition_groups(private) if cfg.partition == "natural" else None
    if cfg.partition == "natural" and groups is None:
        raise ConfigError(
            "partition=natural needs rows with groups (task=shakespeare: the play); use contiguous or iid"
        )
    try:
        with time_limit(SETUP_LIMIT_S, f"partition={cfg.partition} of {len(private)} rows"):
            if groups is not None:
                local = natural(groups, cfg.num_clients)
            else:
                local = partition(
                    labels or [0] * len(private), cfg.num_clients, cfg.partition, cfg.seed, cfg.dirichlet_alpha
                )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return len(public), [[private.start + i for i in shard] for shard in local]
