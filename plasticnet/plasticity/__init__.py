"""Plasticity: the model protocol it works on, drop/grow criteria, schedules and the controller."""

from plasticnet.plasticity.controller import PlasticityController, RewireEvent
from plasticnet.plasticity.protocol import PathId, PlasticModel
from plasticnet.plasticity.schedules import RewireSchedule, cosine_drop_fraction

__all__ = ["PathId", "PlasticModel", "PlasticityController", "RewireEvent", "RewireSchedule", "cosine_drop_fraction"]
