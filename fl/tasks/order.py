"""Which rows make each batch: a seeded shuffle, optionally grouped by length. The one owner of a
seeded order in fl: training epochs, the KD teacher's passes and the public rows' endless cycle.

Batches are padded to their longest row, so a random batch of short sentences pays for its one long
row. `group_by_length` (the idea of transformers' `Trainer(group_by_length=True)`) shuffles the
rows, sorts each window of `WINDOW_BATCHES` batches by length, cuts the window into batches and
shuffles the batches: rows of similar length train together, and the order of rows and batches
is still random from epoch to epoch. Measured on MiniLM-L6 with Rotten Tomatoes sentences (batch
16, fp32, AVX2 EPYC, 2 cores): 288 ms a step grouped against 426 ms shuffled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

WINDOW_BATCHES = 50  # rows are sorted within windows of this many batches (Trainer's megabatches)


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    group_by_length: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Row indices of each batch of one epoch, in training order.

    Without grouping: one seeded permutation cut into batches (every batch full but the last).
    With grouping: the same permutation, windows of `WINDOW_BATCHES * batch_size` rows sorted by
    length (stable) and cut into batches, then the batches in a seeded random order; only the last
    window can leave a short batch, so an epoch has the same number of batches either way.
    `generator` (instead of `seed`): go on drawing from it (`cycle_batches`' passes).
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    window = batch_size * WINDOW_BATCHES
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        rows = sorted(order[w : w + window], key=lambda i: lengths[i])
        batches += [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def row_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """One seeded pass over positions 0..n-1, in batches (rows whose lengths do not matter)."""
    return epoch_batches([0] * n, batch_size, seed)


def cycle_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded batches of positions 0..n-1, reshuffled at each pass (one generator throughout)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from epoch_batches([0] * n, batch_size, seed, generator=gen)
