"""Plastic networks: PlasticResNet (issue 4) and its architecture presets."""

from plasticnet.models.plastic_resnet import ARCHITECTURES, PlasticResNet

__all__ = ["ARCHITECTURES", "PlasticResNet"]
