"""plasticnet: plastic residual networks with fused residual-aggregation kernels."""

from plasticnet.models import PlasticResNet, plasticize
from plasticnet.nn import FusedBasicBlock, FusedBottleneck, fuse
from plasticnet.ops import available_backends, residual_aggregate

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "available_backends",
    "residual_aggregate",
    "FusedBasicBlock",
    "FusedBottleneck",
    "fuse",
    "plasticize",
    "PlasticResNet",
]
