"""Networks: PlasticResNet, its topology and architecture presets, plasticize(), StaticResNet."""

from plasticnet.models.architectures import ARCHITECTURES, STEMS, blocks_for_budget
from plasticnet.models.plastic_resnet import PlasticResNet
from plasticnet.models.plasticize import plasticize
from plasticnet.models.static_resnet import StaticResNet
from plasticnet.models.topology import PathId, Topology

__all__ = [
    "ARCHITECTURES",
    "STEMS",
    "PathId",
    "PlasticResNet",
    "StaticResNet",
    "Topology",
    "blocks_for_budget",
    "plasticize",
]
