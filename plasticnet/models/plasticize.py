"""plasticize: a torchvision ResNet as a PlasticResNet that reuses its modules."""

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from plasticnet.models.path import residual_body
from plasticnet.models.plastic_resnet import PlasticResNet
from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck

# PlasticResNet options that plasticize reads off the model instead of taking them
_DERIVED = (
    "arch",
    "num_classes",
    "body",
    "nodes_per_stage",
    "stage_widths",
    "stage_strides",
    "stem_width",
    "groups",
    "width_per_group",
    "norm_layer",
    "base_width",
    "stem",
    "stem_pool_stride",
    "projection",
)


# Blocks whose function is known to be relu(body(x) + identity): a subclass may compute something
# else, which rebuilding it from its conv/BN modules would silently change.
_KNOWN_BLOCKS = (BasicBlock, Bottleneck, FusedBasicBlock, FusedBottleneck)


def _blocks(model: ResNet) -> list[Sequence[nn.Module]]:
    stages = [list(getattr(model, f"layer{s}")) for s in range(1, 5)]
    kinds = {type(b) for stage in stages for b in stage if not isinstance(b, (BasicBlock, Bottleneck))}
    if kinds:
        raise TypeError(
            f"model: expected torchvision BasicBlock or Bottleneck blocks, got {sorted(k.__name__ for k in kinds)}"
        )
    unknown = [
        f"layer{s}.{b} ({type(block).__qualname__})"
        for s, stage in enumerate(stages, start=1)
        for b, block in enumerate(stage)
        if type(block) not in _KNOWN_BLOCKS
    ]
    if unknown:
        raise ValueError(
            f"model: cannot plasticize these blocks, which are neither torchvision's "
            f"BasicBlock/Bottleneck nor fused blocks: {', '.join(unknown)}"
        )
    if len({isinstance(b, Bottleneck) for stage in stages for b in stage}) != 1:
        raise TypeError("model: expected one block kind throughout, got both BasicBlock and Bottleneck")
    return stages


def _body_of(block: nn.Module) -> nn.Sequential:
    """The block's own conv/BN modules as a path body (same names, same weights)."""
    count = 3 if isinstance(block, Bottleneck) else 2
    return residual_body([(getattr(block, f"conv{n}"), getattr(block, f"bn{n}")) for n in range(1, count + 1)])


def plasticize(
    model: nn.Module, *, max_span: int = 3, budget: int | None = None, init: str = "resnet", **options
) -> PlasticResNet:
    """A PlasticResNet over a torchvision ResNet (resnet18..152, wide_resnet, resnext, or one
    built from torchvision's ResNet class with any stem and head).

    The result REUSES the model's modules, not copies: its stem (conv1, bn1, relu, maxpool),
    each block's body as path (j-1 -> j), each block's downsample as the trunk projection,
    and avgpool/fc. The other candidate paths are new, with the model's body kind, groups,
    width_per_group and norm layer. With init="resnet" it computes the same function as the
    model. `options` are further PlasticResNet options (seed, backend, gate_init, ...); the
    layout options are read off the model.
    """
    if not isinstance(model, ResNet):
        raise TypeError(
            f"model: expected a torchvision.models.ResNet (resnet18..152, wide_resnet, resnext), "
            f"got {type(model).__name__}"
        )
    overridden = [
        name for name in ("forward", "_forward_impl") if getattr(type(model), name) is not getattr(ResNet, name)
    ]
    if overridden:
        raise ValueError(
            f"model: {type(model).__qualname__} overrides ResNet.{', ResNet.'.join(overridden)}; "
            "plasticize rebuilds torchvision's forward, which would silently change its function"
        )
    derived = sorted(set(options) & set(_DERIVED))
    if derived:
        raise TypeError(f"plasticize: {derived} are read off the model and cannot be given")
    if model.dilation != 1:
        raise ValueError(
            "model: dilated ResNets (replace_stride_with_dilation) are not supported: a path "
            "would need the dilation of every block it crosses"
        )
    stages = _blocks(model)
    is_bottleneck = isinstance(stages[0][0], Bottleneck)
    plastic = PlasticResNet(
        "resnet50" if is_bottleneck else "resnet18",
        num_classes=1,  # the model's own head replaces the one built here
        init=init,
        budget=budget,
        max_span=max_span,
        nodes_per_stage=[len(stage) for stage in stages],
        stage_widths=[(stage[0].bn3 if is_bottleneck else stage[0].bn2).num_features for stage in stages],
        stage_strides=[stage[0].stride for stage in stages],
        stem_width=stages[0][0].conv1.in_channels,
        groups=model.groups,
        width_per_group=model.base_width,
        norm_layer=getattr(model, "_norm_layer", nn.BatchNorm2d),
        **options,
    )
    plastic.stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool))
    for j, block in enumerate((b for stage in stages for b in stage), start=1):
        plastic.trunk[j - 1] = block.downsample if block.downsample is not None else nn.Identity()
        plastic.path(j - 1, j).body = _body_of(block)
    plastic.avgpool, plastic.fc = model.avgpool, model.fc
    parameter = next(model.parameters())
    plastic.to(device=parameter.device, dtype=parameter.dtype)
    plastic.train(model.training)
    plastic._sync_topology()  # the reused modules take the topology's requires_grad flags
    return plastic
