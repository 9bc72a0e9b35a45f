"""Training: on-device data, the loop, checkpoints, the run directory, plots and recipes
(`plasticnet train`; the Python entry point is Trainer(config).fit())."""

from plasticnet.training.loop import Trainer

__all__ = ["Trainer"]
