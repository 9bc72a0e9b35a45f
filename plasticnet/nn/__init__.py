"""Neural-network modules: fused drop-in ResNet blocks and model conversion."""

from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck
from plasticnet.nn.fuse import fuse
from plasticnet.nn.plasticize import plasticize

__all__ = ["FusedBasicBlock", "FusedBottleneck", "fuse", "plasticize"]
