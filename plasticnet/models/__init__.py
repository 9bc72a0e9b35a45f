"""Plastic networks: PlasticResNet (issue 4) and its architecture presets."""

from plasticnet.models.architectures import ARCHITECTURES, STEMS, blocks_for_budget
from plasticnet.models.plastic_resnet import PlasticResNet
from plasticnet.models.static_resnet import StaticResNet

__all__ = ["ARCHITECTURES", "STEMS", "PlasticResNet", "StaticResNet", "blocks_for_budget"]
