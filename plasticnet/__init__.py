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
    "load_run",
    "plasticize",
    "PlasticResNet",
]


def __getattr__(name: str):
    # load_run needs the training package (torchvision, the data loaders): imported on first use only
    if name == "load_run":
        from plasticnet.deploy import load_run

        return load_run
    raise AttributeError(f"module 'plasticnet' has no attribute {name!r}")
