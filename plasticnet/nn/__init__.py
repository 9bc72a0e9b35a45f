"""Neural-network modules: fused drop-in ResNet blocks, and fuse() to swap them into a ResNet."""

from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck
from plasticnet.nn.fuse import fuse

__all__ = ["FusedBasicBlock", "FusedBottleneck", "fuse"]
