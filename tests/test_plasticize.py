"""plasticize: torchvision ResNets become PlasticResNets that reuse their modules and, at
init="resnet", compute the same function (outputs and gradients, train and eval mode)."""

import pytest
import torch
import torchvision
from helpers import randomize_batchnorm
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from plasticnet.models import PlasticResNet, plasticize
from plasticnet.nn.blocks import FusedBasicBlock

# torchvision's own models (resnet152: the deepest, 50 nodes) and small members of each family
# (wide_resnet50_2 is this class with width_per_group=128; fewer blocks keep the test fast).
MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "resnext50_32x4d": lambda: torchvision.models.resnext50_32x4d(num_classes=10),
    "resnet152": lambda: torchvision.models.resnet152(num_classes=10),
    "bottleneck": lambda: ResNet(Bottleneck, [2, 1, 1, 1], num_classes=7),
    "resnext": lambda: ResNet(Bottleneck, [1, 2, 1, 1], num_classes=7, groups=4, width_per_group=8),
    "wide": lambda: ResNet(Bottleneck, [1, 1, 2, 1], num_classes=7, width_per_group=128),
    "fused-basic": lambda: ResNet(FusedBasicBlock, [1, 1, 1, 2], num_classes=7),
}


def gradients(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODELS))
def test_plasticized_model_computes_the_original(name):
    model = MODELS[name]()
    randomize_batchnorm(model)
    plastic = plasticize(model, max_span=2)
    assert isinstance(plastic, PlasticResNet)
    assert plastic.active_paths() == [(j - 1, j) for j in range(1, plastic.num_nodes + 1)]
    assert len(plastic.candidate_paths()) > plastic.num_nodes
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        model.train(train), plastic.train(train)
        expected, expected_grads = gradients(model, x)
        output, grads = gradients(plastic, x)
        torch.testing.assert_close(output, expected)
        # the modules are shared: the same parameter objects got the same gradients
        by_id = {id(p): n for n, p in model.named_parameters()}
        shared = {by_id[id(p)]: grads[n] for n, p in plastic.named_parameters() if id(p) in by_id}
        assert shared.keys() == expected_grads.keys()
        for n, g in expected_grads.items():
            torch.testing.assert_close(shared[n], g)


def test_plasticized_model_is_plastic():
    plastic = plasticize(ResNet(BasicBlock, [2, 2, 1, 1], num_classes=5), max_span=3, init="random", budget=4, seed=0)
    assert len(plastic.active_paths()) == plastic.budget == 4
    grown = next(p for p in plastic.candidate_paths() if p not in plastic.active_paths())
    x = torch.randn(2, 3, 16, 16)
    with plastic.probing([grown]):
        plastic(x).sum().backward()
    assert plastic.path_statistics()["updates"][plastic.candidate_paths().index(grown)] == 1
    plastic.reinitialize_path(*grown)
    plastic.set_active(plastic.active_paths()[1:] + [grown])
    plastic(x.to(memory_format=torch.channels_last)).sum().backward()
    assert plastic.path(*grown).gate.grad is not None


def test_new_paths_follow_the_model_body():
    plastic = plasticize(ResNet(Bottleneck, [1, 2, 1, 1], groups=4, width_per_group=8), max_span=2)
    body = plastic.path(1, 3).body  # a new path across the stride-2 stage change
    assert [name for name, _ in body.named_children()] == [
        "conv1",
        "bn1",
        "relu1",
        "conv2",
        "bn2",
        "relu2",
        "conv3",
        "bn3",
    ]
    assert body.conv2.groups == 4 and body.conv2.stride == (2, 2)
    assert body.conv1.in_channels == 256 and body.conv3.out_channels == 512


def test_not_a_resnet_is_a_type_error():
    with pytest.raises(TypeError, match="model: expected a torchvision.models.ResNet"):
        plasticize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))


class _ScaledResidualBlock(BasicBlock):
    """A user's BasicBlock subclass whose forward differs from torchvision's."""

    def forward(self, x):
        return torch.relu(0.5 * self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class _FeatureResNet(ResNet):
    """A user's ResNet subclass whose forward returns the pooled features, not the logits."""

    def _forward_impl(self, x):
        return torch.flatten(self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))), 1)


def test_a_model_computing_something_else_is_refused():
    """Rebuilding a block or a forward torchvision does not define would change the function silently."""
    model = ResNet(BasicBlock, [2, 1, 1, 1])
    model.layer1[1] = _ScaledResidualBlock(64, 64)
    with pytest.raises(ValueError, match=r"cannot plasticize.*: layer1\.1 \(_ScaledResidualBlock\)$"):
        plasticize(model)
    with pytest.raises(ValueError, match="_FeatureResNet overrides ResNet._forward_impl"):
        plasticize(_FeatureResNet(BasicBlock, [1, 1, 1, 1]))


def test_derived_options_cannot_be_given():
    with pytest.raises(TypeError, match=r"\['nodes_per_stage'\] are read off the model"):
        plasticize(ResNet(BasicBlock, [1, 1, 1, 1]), nodes_per_stage=(1, 1, 1, 1))


def test_dilated_resnet_is_refused():
    model = ResNet(Bottleneck, [1, 1, 1, 1], replace_stride_with_dilation=[False, True, True])
    with pytest.raises(ValueError, match="dilated"):
        plasticize(model)
