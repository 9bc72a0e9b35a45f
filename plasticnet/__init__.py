"""plasticnet: plastic residual networks with fused residual-aggregation kernels."""

from plasticnet.models import PlasticResNet
from plasticnet.nn import FusedBasicBlock, FusedBottleneck, fuse, plasticize
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
