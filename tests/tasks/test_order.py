"""Training batch order: the plain shuffle is today's, grouping by length keeps every row once per
epoch and the same number of batches, with less padding."""

from __future__ import annotations

import random

import pytest
import torch

from fl.tasks.classify import Encoded, train_batches
from fl.tasks.order import WINDOW_BATCHES, epoch_batches


def lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 64) for _ in range(n)]


def test_plain_shuffle_is_one_seeded_permutation_cut_into_batches():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(7)).tolist()
    assert epoch_batches(lengths(103), 16, 7) == [order[s : s + 16] for s in range(0, 103, 16)]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 16 * WINDOW_BATCHES, 16 * WINDOW_BATCHES * 2 + 5, 1506])
def test_grouped_epoch_has_every_row_once_and_as_many_batches(n):
    lens = lengths(n)
    plain, grouped = epoch_batches(lens, 16, 3), epoch_batches(lens, 16, 3, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(n))
    assert len(grouped) == len(plain)
    assert sum(len(b) < 16 for b in grouped) == (1 if n % 16 else 0)  # only the last window's tail is short


def test_grouped_batches_pad_less_and_hold_rows_of_one_window_sorted():
    lens = lengths(2000)
    width = {g: sum(max(lens[i] for i in b) for b in epoch_batches(lens, 16, 1, g)) for g in (False, True)}
    assert width[True] < 0.7 * width[False]
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(1)).tolist()
    window_of = {row: pos // (16 * WINDOW_BATCHES) for pos, row in enumerate(order)}
    for b in epoch_batches(lens, 16, 1, True):
        assert len({window_of[i] for i in b}) == 1
        assert [lens[i] for i in b] == sorted(lens[i] for i in b)


def test_grouped_order_is_seeded_and_changes_with_the_seed():
    lens = lengths(1000)
    assert epoch_batches(lens, 16, 5, True) == epoch_batches(lens, 16, 5, True)
    assert epoch_batches(lens, 16, 5, True) != epoch_batches(lens, 16, 6, True)


def test_classify_batches_follow_the_order():
    lens = lengths(50)
    enc = Encoded([[5] * n for n in lens], [i % 2 for i in range(50)], 0)
    for group in (False, True):
        batches = list(train_batches(enc, 8, 2, group))
        expect = epoch_batches(lens, 8, 2, group)
        assert [b["attention_mask"].sum(1).tolist() for b in batches] == [[lens[i] for i in r] for r in expect]
        assert [b["input_ids"].shape[1] for b in batches] == [max(lens[i] for i in r) for r in expect]
