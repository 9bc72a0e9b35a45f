"""Neural-network modules: fused drop-in ResNet blocks and model conversion.

One import line per public name (no __all__ to keep in step)."""
from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck
from plasticnet.nn.fuse import fuse
from plasticnet.nn.plasticize import plasticize
