import random
from collections import Counter

import pytest

from fl.data.partition import contiguous, dirichlet, iid, partition, public_split

_RNG = random.Random(0)
LABELS = [_RNG.randint(0, 1) for _ in range(1003)]


@pytest.mark.parametrize("method", ["contiguous", "iid", "dirichlet"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_disjoint_cover_nonempty(method, n):
    shards = partition(LABELS, n, method, seed=7, alpha=0.3)
    flat = [i for s in shards for i in s]
    assert len(shards) == n
    assert sorted(flat) == list(range(len(LABELS)))  # covers everything, no duplicates
    assert all(len(s) > 0 for s in shards)


def test_equal_sizes_for_contiguous_and_iid():
    for fn in (contiguous, iid):
        sizes = [len(s) for s in fn(LABELS, 4, 0)]
        assert max(sizes) - min(sizes) <= 1


def test_contiguous_keeps_data_order():
    assert contiguous(list(range(10)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_seed_stability():
    assert iid(LABELS, 4, 3) == iid(LABELS, 4, 3)
    assert iid(LABELS, 4, 3) != iid(LABELS, 4, 4)
    assert dirichlet(LABELS, 4, 3, 0.5) == dirichlet(LABELS, 4, 3, 0.5)


def _skew(shards):
    """Mean absolute deviation of each shard's positive share from the global one."""
    glob = sum(LABELS) / len(LABELS)
    return sum(abs(sum(LABELS[i] for i in s) / len(s) - glob) for s in shards) / len(shards)


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    skewed = [_skew(dirichlet(LABELS, 5, seed, 0.1)) for seed in range(5)]
    mild = [_skew(dirichlet(LABELS, 5, seed, 100.0)) for seed in range(5)]
    assert sum(skewed) / 5 > 0.2 > 0.05 > sum(mild) / 5
    hist = Counter(LABELS[i] for i in iid(LABELS, 5, 0)[0])
    assert abs(hist[1] / sum(hist.values()) - sum(LABELS) / len(LABELS)) < 0.08


def test_public_split_is_the_first_percent():
    pub, rest = public_split(1000, 20)
    assert pub == range(0, 200) and rest == range(200, 1000)
    assert public_split(10, 0)[0] == range(0, 0)


def test_too_few_examples_and_unknown_method():
    with pytest.raises(ValueError, match="cannot be split among 5 clients"):
        iid([0, 1, 0], 5)
    with pytest.raises(ValueError, match="partition='shards' is not valid"):
        partition(LABELS, 2, "shards", 0)
