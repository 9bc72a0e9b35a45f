"""plasticnet: plastic residual networks with fused residual-aggregation kernels."""
from plasticnet.ops import available_backends, residual_aggregate
from plasticnet.nn import FusedBasicBlock, FusedBottleneck, fuse, plasticize
from plasticnet.models import PlasticResNet

__version__ = "0.1.0"
__all__ = ["__version__", "available_backends", "residual_aggregate", "FusedBasicBlock", "FusedBottleneck",
           "fuse", "plasticize", "PlasticResNet"]
