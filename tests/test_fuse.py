"""Drop-in fused blocks and fuse(): torchvision ResNets keep their function, gradients,
state_dict and layout once their residual joins run through residual_aggregate."""

import copy
import zlib

import pytest
import torch
import torchvision
from helpers import randomize_batchnorm
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from plasticnet.nn import FusedBasicBlock, FusedBottleneck, fuse
from plasticnet.ops import available_backends

INPUT_SHAPE = (2, 3, 32, 32)


def _forward(model: nn.Module, x: torch.Tensor):
    """(leaf input, output) of a forward with freshly cleared gradients."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    return x, model(x)


def _assert_same_function(original: nn.Module, fused: nn.Module, x: torch.Tensor, **tolerance) -> None:
    """Same output, input grad, every parameter grad and BN running statistics (assert_close
    defaults unless `tolerance` gives rtol and atol)."""
    x_ref, y_ref = _forward(original, x)
    grad_out = torch.randn_like(y_ref)
    y_ref.backward(grad_out)
    x_fused, y = _forward(fused, x)
    y.backward(grad_out)
    torch.testing.assert_close(y, y_ref, **tolerance)
    torch.testing.assert_close(x_fused.grad, x_ref.grad, **tolerance)
    grads_ref = dict(original.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(
            p.grad, grads_ref.pop(name).grad, **tolerance, msg=lambda m, name=name: f"grad of {name}: {m}"
        )
    assert not grads_ref, f"parameters missing from the fused model: {list(grads_ref)}"
    for name, buffer in fused.state_dict().items():
        torch.testing.assert_close(
            buffer, original.state_dict()[name], **tolerance, msg=lambda m, name=name: f"{name}: {m}"
        )


def _fused_twin(original: nn.Module, **fuse_kwargs) -> nn.Module:
    fused = fuse(copy.deepcopy(original), **fuse_kwargs)
    assert fused.state_dict().keys() == original.state_dict().keys()
    return fused


@pytest.fixture(scope="module", params=["resnet18", "resnet50", "wide_resnet50_2", "resnext50_32x4d"])
def torchvision_pair(request):
    """(torchvision model with random BN statistics, its fused copy), built once per architecture."""
    # Module-scoped fixtures run before the per-test seed: seed from the architecture instead.
    torch.manual_seed(zlib.crc32(request.param.encode()))
    original = randomize_batchnorm(getattr(torchvision.models, request.param)())
    return original, _fused_twin(original)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_fuse_keeps_torchvision_function_and_gradients(torchvision_pair, train):
    original, fused = torchvision_pair
    original.train(train)
    fused.train(train)
    expected_twin = {BasicBlock: FusedBasicBlock, Bottleneck: FusedBottleneck}
    for name, block in original.named_modules():
        if type(block) in expected_twin:
            assert type(fused.get_submodule(name)) is expected_twin[type(block)]
    _assert_same_function(original, fused, torch.randn(INPUT_SHAPE))


@pytest.mark.parametrize(
    "block, fused_block, layers, kwargs",
    [
        (BasicBlock, FusedBasicBlock, [2, 2, 2, 2], {}),
        (Bottleneck, FusedBottleneck, [1, 2, 1, 1], {"groups": 2, "width_per_group": 32}),
    ],
    ids=["basic", "bottleneck"],
)
def test_resnet_built_from_fused_blocks_loads_torchvision_weights(block, fused_block, layers, kwargs):
    original = randomize_batchnorm(ResNet(block, layers, num_classes=7, **kwargs)).eval()
    fused = ResNet(fused_block, layers, num_classes=7, **kwargs).eval()
    assert fused.state_dict().keys() == original.state_dict().keys()
    fused.load_state_dict(original.state_dict())  # strict: no missing or unexpected key
    _assert_same_function(original, fused, torch.randn(INPUT_SHAPE))


def test_fuse_converts_every_block_of_resnet152_in_place_and_is_idempotent():
    with torch.device("meta"):  # conversion only: no need to initialise 60M weights
        model = torchvision.models.resnet152()
    bottlenecks = [name for name, m in model.named_modules() if type(m) is Bottleneck]
    parameters = dict(model.named_parameters())
    assert fuse(model) is model
    fuse(model, backend="reference")
    assert [name for name, m in model.named_modules() if type(m) is FusedBottleneck] == bottlenecks
    assert len(bottlenecks) == 3 + 8 + 36 + 3
    # The very same Parameter objects: an optimizer built before fuse() still updates the model.
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert all(model.get_submodule(name).backend == "reference" for name in bottlenecks)
    assert all(model.get_submodule(name).join_gates.device.type == "meta" for name in bottlenecks)


def test_fuse_keeps_hooks_registered_on_blocks():
    model = ResNet(BasicBlock, [1, 1, 1, 1]).eval()
    block_outputs = []
    model.layer2[0].register_forward_hook(lambda module, args, output: block_outputs.append(output))
    fuse(model)(torch.randn(1, 3, 16, 16))
    assert [out.shape for out in block_outputs] == [(1, 128, 2, 2)]


def test_fuse_works_with_channels_last():
    original = randomize_batchnorm(torchvision.models.resnet18()).to(memory_format=torch.channels_last).eval()
    fused = _fused_twin(original)
    x = torch.randn(INPUT_SHAPE).to(memory_format=torch.channels_last)
    _assert_same_function(original, fused, x)
    trunk = fused.maxpool(fused.relu(fused.bn1(fused.conv1(x))))
    assert fused.layer1(trunk).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compiled_fused_resnet18_equals_eager():
    fused = fuse(randomize_batchnorm(torchvision.models.resnet18())).eval()
    compiled = copy.deepcopy(fused)
    compiled.compile(fullgraph=False)  # in place, unlike torch.compile(): parameter names stay the same
    # Inductor reorders fp32 arithmetic (e.g. folds BN), so 18 layers of backward drift slightly.
    _assert_same_function(fused, compiled, torch.randn(INPUT_SHAPE), rtol=1e-4, atol=1e-4)


def test_fused_channels_last_resnet_compiles_to_the_original_function():
    original = randomize_batchnorm(ResNet(Bottleneck, [1, 1, 1, 1], num_classes=7))
    original.to(memory_format=torch.channels_last)
    compiled = _fused_twin(original)
    compiled.compile(backend="aot_eager", fullgraph=True)  # the fused join must not break the graph
    x = torch.randn(INPUT_SHAPE).to(memory_format=torch.channels_last)
    for train in (False, True):
        original.train(train), compiled.train(train)
        _assert_same_function(original, compiled, x)


def _device_backends():
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [
        pytest.param(device, backend, id=f"{device}-{backend}")
        for device in devices
        for backend in available_backends(device)
    ]


@pytest.mark.parametrize("device, backend", _device_backends())
def test_fuse_with_each_available_backend(device, backend):
    original = randomize_batchnorm(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)).to(device).train()
    fused = _fused_twin(original, backend=backend)
    assert {m.backend for m in fused.modules() if isinstance(m, FusedBasicBlock)} == {backend}
    # cuDNN's weight-gradient reductions are not bitwise reproducible from run to run.
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if device == "cuda" else {}
    _assert_same_function(original, fused, torch.randn(3, 3, 21, 19, device=device), **tolerance)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: torchvision.models.vgg11(),
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
    ],
    ids=["vgg11", "sequential"],
)
def test_fuse_rejects_a_model_that_is_not_a_resnet(make_model):
    with torch.device("meta"):
        model = make_model()
    with pytest.raises(TypeError, match="expected a torchvision ResNet-family model"):
        fuse(model)


def test_fuse_rejects_a_non_module():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got str"):
        fuse("resnet18")


def test_fuse_rejects_an_unknown_backend_name():
    with pytest.raises(ValueError, match="backend: expected None or one of .* got 'fast'"):
        fuse(ResNet(BasicBlock, [1, 1, 1, 1]), backend="fast")


class _ScaledResidualBlock(BasicBlock):
    """A user's BasicBlock subclass whose forward differs from torchvision's."""

    def forward(self, x):
        return torch.relu(0.5 * self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


def test_fuse_reports_unknown_block_subclasses_and_changes_nothing():
    model = ResNet(BasicBlock, [2, 1, 1, 1])
    model.layer1[1] = _ScaledResidualBlock(64, 64)
    with pytest.raises(ValueError, match=r"cannot fuse.*: layer1\.1 \(_ScaledResidualBlock\)$"):
        fuse(model)
    assert not any(isinstance(m, FusedBasicBlock) for m in model.modules())
