"""A plastic path (i -> j): a residual body with a learned scalar gate.

Bodies are nn.Sequential with torchvision's submodule names (conv1, bn1, conv2, bn2[, conv3,
bn3]), so a torchvision BasicBlock's or Bottleneck's weights load into them by name.
"""

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

BODIES = ("basic", "bottleneck")
GATE_POSITIONS = ("join", "after_relu")
# Output channels of a body / its inner width, as in torchvision's BasicBlock and Bottleneck.
EXPANSION = {"basic": 1, "bottleneck": 4}

NormLayer = Callable[[int], nn.Module]


def residual_body(layers: Sequence[tuple[nn.Module, nn.Module]]) -> nn.Sequential:
    """conv1-bn1-ReLU-conv2-bn2[-ReLU-conv3-bn3]: (conv, norm) pairs with a ReLU between
    consecutive pairs and none after the last (the join applies the block's final activation)."""
    modules = OrderedDict()
    for n, (conv, norm) in enumerate(layers, start=1):
        if n > 1:
            modules[f"relu{n - 1}"] = nn.ReLU(inplace=True)
        modules[f"conv{n}"] = conv
        modules[f"bn{n}"] = norm
    return nn.Sequential(modules)


def make_body(
    kind: str,
    in_channels: int,
    out_channels: int,
    stride: int,
    *,
    groups: int = 1,
    width_per_group: int = 64,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Sequential:
    """A BasicBlock ("basic") or Bottleneck ("bottleneck") body from in_channels to out_channels;
    the stride sits where torchvision puts it (first 3x3 conv of either body)."""

    def conv(cin, cout, k, s=1, g=1):
        return nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=k // 2, groups=g, bias=False)

    if kind == "basic":
        return residual_body(
            [
                (conv(in_channels, out_channels, 3, stride), norm_layer(out_channels)),
                (conv(out_channels, out_channels, 3), norm_layer(out_channels)),
            ]
        )
    if kind == "bottleneck":
        width = int(out_channels // EXPANSION["bottleneck"] * (width_per_group / 64.0)) * groups
        return residual_body(
            [
                (conv(in_channels, width, 1), norm_layer(width)),
                (conv(width, width, 3, stride, groups), norm_layer(width)),
                (conv(width, out_channels, 1), norm_layer(out_channels)),
            ]
        )
    raise ValueError(f"body: expected one of {list(BODIES)}, got {kind!r}")


@torch.no_grad()
def init_resnet_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: kaiming-normal (fan_out) convs, norm weight 1 and
    bias 0, running statistics reset."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if getattr(m, "track_running_stats", False):
            m.reset_running_stats()


def last_norm(body: nn.Sequential) -> nn.Module:
    """The body's final normalisation layer (bn2 of a basic body, bn3 of a bottleneck)."""
    return [m for name, m in body.named_children() if name.startswith("bn")][-1]


class Path(nn.Module):
    """A residual path: `body` (n_i's shape -> n_j's shape) and its scalar `gate`.

    forward returns the branch h = body(x), or relu(body(x)) with gate_position="after_relu"
    (the original PlasticNet). The gate is not applied here: the node join applies it
    (y = act(trunk + sum_k g_k h_k)), so one fused kernel scales and sums every branch.
    """

    def __init__(self, body: nn.Module, gate: float = 1.0, gate_position: str = "join"):
        super().__init__()
        if gate_position not in GATE_POSITIONS:
            raise ValueError(f"gate_position: expected one of {list(GATE_POSITIONS)}, got {gate_position!r}")
        self.body = body
        self.gate = nn.Parameter(torch.tensor(float(gate)))
        self.gate_position = gate_position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.relu(h) if self.gate_position == "after_relu" else h

    def extra_repr(self) -> str:
        return f"gate_position={self.gate_position!r}"
