"""Plastic networks: PlasticResNet (issue 4) and its architecture presets."""

from plasticnet.models.architectures import ARCHITECTURES, STEMS, blocks_for_budget
from plasticnet.models.plastic_resnet import PlasticResNet

__all__ = ["ARCHITECTURES", "STEMS", "PlasticResNet", "blocks_for_budget"]
