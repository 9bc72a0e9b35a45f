"""The fixed parts of a plastic ResNet: the stem that makes n_0 from the image, and the trunk
projections T_j that carry n_{j-1} to node j's shape. Module names follow torchvision's
ResNet (conv1, bn1, relu, maxpool; a downsample's conv and BN), so its weights load by name.
"""

from collections import OrderedDict

from torch import nn

from plasticnet.models.architectures import STEMS
from plasticnet.models.path import NormLayer

PROJECTIONS = ("conv1x1", "conv3x3")


def make_stem(kind: str, width: int, pool_stride: int = 2, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """A stem with `width` output channels. "cifar": 3x3 stride-1 conv, no max-pool; "imagenet":
    torchvision's 7x7 stride-2 conv and a 3x3 max-pool of stride `pool_stride`. Both end in BN, ReLU."""
    if kind == "cifar":
        conv, pool = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.Identity()
    elif kind == "imagenet":
        conv, pool = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, pool_stride, 1)
    else:
        raise ValueError(f"stem: expected one of {list(STEMS)}, got {kind!r}")
    return nn.Sequential(OrderedDict(conv1=conv, bn1=norm_layer(width), relu=nn.ReLU(inplace=True), maxpool=pool))


def make_projection(
    kind: str, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer = nn.BatchNorm2d
) -> nn.Module:
    """The identity where the shape stays; else "conv1x1" (strided 1x1 conv + BN, torchvision's
    downsample) or "conv3x3" (3x3 conv + BN)."""
    if kind not in PROJECTIONS:
        raise ValueError(f"projection: expected one of {list(PROJECTIONS)}, got {kind!r}")
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    kernel = 1 if kind == "conv1x1" else 3
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
    return nn.Sequential(conv, norm_layer(out_channels))
