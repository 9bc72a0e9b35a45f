"""Plasticity: per-path scores, drop/grow criteria, schedules and the controller."""

from plasticnet.plasticity.controller import PlasticityController, RewireEvent
from plasticnet.plasticity.schedules import RewireSchedule, cosine_drop_fraction
from plasticnet.plasticity.scores import PathScores

__all__ = ["PathScores", "PlasticityController", "RewireEvent", "RewireSchedule", "cosine_drop_fraction"]
