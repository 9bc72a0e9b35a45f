"""StaticResNet (torchvision's ResNet, any blocks per stage) and the layout of a block budget."""

import pytest
import torch
import torchvision

from plasticnet.models import StaticResNet, blocks_for_budget
from plasticnet.nn import FusedBottleneck


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


def test_blocks_per_stage_sets_the_depth():
    model = StaticResNet("resnet18", 10, blocks_per_stage=(2, 1, 1, 2), base_width=8)
    assert model.blocks_per_stage == (2, 1, 1, 2)
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2, 1, 1, 2]
    assert len(model.blocks) == 6
    assert model.active_paths() == [(j - 1, j) for j in range(1, 7)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_arch_gives_the_default_blocks_and_the_block_kind():
    model = StaticResNet("resnet50", 10, base_width=8)
    assert model.blocks_per_stage == (3, 4, 6, 3)
    assert all(isinstance(b, FusedBottleneck) for b in model.blocks)
    assert model.fc.in_features == 8 * 8 * 4  # last stage: base_width * 8, times the Bottleneck expansion
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "blocks", [(2, 2, 2), (2, 2, 2, 2, 2), (2, 0, 2, 2), (2, 2.0, 2, 2), (2, True, 2, 2), 8, "2222"]
)
def test_bad_blocks_per_stage(blocks):
    with pytest.raises(ValueError, match="blocks_per_stage: expected 4 positive ints"):
        StaticResNet("resnet18", blocks_per_stage=blocks)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"arch": "resnet19"}, "arch"),
        ({"stem": "mnist"}, "stem"),
        ({"base_width": 0}, "base_width"),
        ({"num_classes": 0}, "num_classes"),
        ({"backend": "fortran"}, "backend"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        StaticResNet(**kwargs)


def test_imagenet_stem_state_dict_is_torchvisions():
    ours = StaticResNet("resnet18", 1000, stem="imagenet", base_width=64).eval()
    theirs = torchvision.models.resnet18().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
