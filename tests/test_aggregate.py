import pytest
import torch

from fl.strategies.aggregate import Update, accumulate, finalize, weighted_average


def test_weighted_average_by_hand():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([[4.0]])}
    avg = weighted_average([Update(a, 1), Update(b, 3)])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5, (0 + 3*4)/4 = 3
    assert torch.equal(avg["w"], torch.tensor([2.5, 5.0]))
    assert torch.equal(avg["b"], torch.tensor([[3.0]]))


def test_reduces_in_fp32_and_leaves_inputs_alone():
    a = {"w": torch.tensor([60000.0], dtype=torch.float16)}
    b = {"w": torch.tensor([60000.0], dtype=torch.float16)}
    avg = weighted_average([Update(a, 10), Update(b, 10)])  # 1.2e6 would overflow fp16
    assert avg["w"].dtype == torch.float32 and avg["w"].item() == 60000.0
    assert a["w"].item() == 60000.0


def test_split_sum_equals_one_shot_average():
    """What client ranks do (partial sums, then one reduce) equals the single-process average."""
    gen = torch.Generator().manual_seed(0)
    ups = [Update({"x": torch.randn(5, generator=gen)}, n) for n in (3, 7, 11, 2)]
    part1 = accumulate(accumulate(None, ups[0].state, 3), ups[2].state, 11)
    part2 = accumulate(accumulate(None, ups[1].state, 7), ups[3].state, 2)
    total = {"x": part1["x"] + part2["x"]}
    torch.testing.assert_close(finalize(total, 23), weighted_average(ups))


def test_key_and_shape_mismatch_are_errors():
    with pytest.raises(ValueError, match="unexpected \\['z'\\], missing \\['x'\\]"):
        weighted_average([Update({"x": torch.ones(1)}, 1), Update({"z": torch.ones(1)}, 1)])
    with pytest.raises(ValueError, match="has shape"):
        weighted_average([Update({"x": torch.ones(1)}, 1), Update({"x": torch.ones(2)}, 1)])
    with pytest.raises(ValueError, match="no updates"):
        weighted_average([])
    with pytest.raises(ValueError, match="must be positive"):
        finalize({"x": torch.ones(1)}, 0)
