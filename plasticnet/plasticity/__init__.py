"""Plasticity: per-path scores, drop/grow criteria, schedules and the controller."""
from plasticnet.plasticity.scores import PathScores

__all__ = ["PathScores"]
