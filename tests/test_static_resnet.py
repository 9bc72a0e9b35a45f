"""Static ResNets: the blocks-per-stage layout of a block budget."""

import pytest

from plasticnet.models import blocks_for_budget


@pytest.mark.parametrize(
    "budget, expected",
    [(4, (1, 1, 1, 1)), (5, (2, 1, 1, 1)), (6, (2, 1, 1, 2)), (7, (2, 2, 1, 2)), (8, (2, 2, 2, 2)), (9, (3, 2, 2, 2))],
)
def test_blocks_for_budget_spreads_the_remainder_from_the_outside_in(budget, expected):
    blocks = blocks_for_budget(budget)
    assert blocks == expected
    assert sum(blocks) == budget


def test_blocks_for_budget_other_stage_counts():
    assert blocks_for_budget(7, num_stages=5) == (2, 1, 1, 1, 2)
    assert blocks_for_budget(8, num_stages=5) == (2, 2, 1, 1, 2)
    assert blocks_for_budget(3, num_stages=1) == (3,)


def test_blocks_for_budget_needs_a_block_per_stage():
    with pytest.raises(ValueError, match="every stage needs one"):
        blocks_for_budget(3)
    with pytest.raises(ValueError, match="num_stages"):
        blocks_for_budget(4, num_stages=0)
    with pytest.raises(TypeError, match="budget"):
        blocks_for_budget(6.0)
