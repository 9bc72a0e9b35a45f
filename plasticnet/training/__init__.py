"""Training: the typed config, on-device data, the loop and its parts (state, logger,
builders), checkpoints, the run directory, plots, recipes, and the sweep runner and report
(`plasticnet train | sweep | report`; from Python: Trainer(TrainConfig(...)).fit())."""

from plasticnet.training.config import TrainConfig
from plasticnet.training.loop import Trainer

__all__ = ["TrainConfig", "Trainer"]
