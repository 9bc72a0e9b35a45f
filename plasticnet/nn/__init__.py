"""Neural-network modules: fused drop-in ResNet blocks, fuse() to swap them into a ResNet, unfuse() back."""

from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck
from plasticnet.nn.fuse import fuse, unfuse

__all__ = ["FusedBasicBlock", "FusedBottleneck", "fuse", "unfuse"]
