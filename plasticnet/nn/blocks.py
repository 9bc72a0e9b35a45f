"""Drop-in twins of torchvision's BasicBlock and Bottleneck whose residual join
`relu(body(x) + identity)` runs through the fused residual_aggregate kernel."""

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from plasticnet.ops import residual_aggregate


class _FusedJoin(nn.Module):
    """The fused residual join shared by both blocks; subclasses supply `_body(x)`.

    State beyond torchvision's: two non-persistent (1,) buffers (so state_dict keys stay
    torchvision's and each forward allocates no constant gates/mask) and `backend`.
    """

    backend: str | None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the torchvision block that follows in the MRO
        self._init_join()

    def _init_join(self, device: torch.device | None = None) -> None:
        # float32 as the op contract asks; a model.half() may cast them, which the op accepts.
        self.register_buffer("join_gates", torch.ones(1, device=device), persistent=False)
        self.register_buffer("join_mask", torch.ones(1, device=device), persistent=False)
        self.backend = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return residual_aggregate(
            identity, [self._body(x)], self.join_gates, self.join_mask, activation="relu", backend=self.backend
        )


class FusedBasicBlock(_FusedJoin, BasicBlock):
    """torchvision's BasicBlock (same constructor, same state_dict) with a fused residual join.

    Set `block.backend` to pick the residual_aggregate backend (None: fastest available).
    """

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class FusedBottleneck(_FusedJoin, Bottleneck):
    """torchvision's Bottleneck (same constructor, same state_dict) with a fused residual join.

    Set `block.backend` to pick the residual_aggregate backend (None: fastest available).
    """

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))
