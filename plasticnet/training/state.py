"""Everything a run needs to continue exactly where it stopped: model, optimizer, lr schedule,
controller, random streams and counters, saved and restored as one checkpoint."""

from dataclasses import dataclass

import torch
from torch import nn

from plasticnet.plasticity import PlasticityController
from plasticnet.training.checkpoint import CheckpointError, restore_rng_states, rng_states
from plasticnet.training.config import TrainConfig

INPUT_STATISTICS = ("input_mean", "input_std")  # checkpoint keys: (1, C, 1, 1) tensors on the [0, 1] scale


@dataclass
class TrainingState:
    """The checkpointable part of a run. `best_score` is the accuracy that picks best.pt: on the
    validation split when the run has one, else on the test split. `input_statistics` (per-channel
    mean and std that normalise the inputs, from the training split) are saved for the exports and
    evaluations of the run: a resumed run computes them again, from the same images."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    controller: PlasticityController | None
    generators: dict[str, torch.Generator]
    epoch: int = 0
    step: int = 0
    best_score: float = -1.0
    input_statistics: tuple[torch.Tensor, torch.Tensor] | None = None

    def state_dict(self, config: TrainConfig) -> dict:
        """Tensors and plain Python values only: loads with torch.load(weights_only=True)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "controller": self.controller.state_dict() if self.controller is not None else None,
            "rng": rng_states(self.generators),
            "epoch": self.epoch,
            "step": self.step,
            "best_accuracy": self.best_score,
            "config": config.to_json(),
            **({} if self.input_statistics is None else dict(zip(INPUT_STATISTICS, self.input_statistics))),
        }

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Restore `state`; CheckpointError naming `source` when it does not fit this run (another
        model, width or optimizer, or a key missing)."""
        missing = sorted(set(self.state_dict_keys) - set(state))
        if missing:
            raise CheckpointError(f"checkpoint {source} lacks {missing}; it is not a complete training checkpoint")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.controller is not None:
                self.controller.load_state_dict(state["controller"])
            restore_rng_states(state["rng"], self.generators)
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            # load_state_dict lists every mismatching tensor, one per line, under a heading
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            details = lines[1:] if lines and lines[0].startswith("Error(s) in loading") else lines
            reason = (details[0] + (f" and {len(details) - 1} more" if len(details) > 1 else "")) if details else ""
            raise CheckpointError(
                f"checkpoint {source} does not fit this run's model and optimizer ({reason or type(error).__name__}); "
                "was it written by another run or configuration?"
            ) from None
        self.epoch, self.step, self.best_score = state["epoch"], state["step"], state["best_accuracy"]

    state_dict_keys = ("model", "optimizer", "scheduler", "controller", "rng", "epoch", "step", "best_accuracy")
