"""A finished (or running) run's network, loaded from its run directory the way --resume loads it:
config.json, then a checkpoint read with weights_only=True and verified, with one-line errors."""

import os
from dataclasses import dataclass

import torch
from torch import nn

from plasticnet.training.builders import build_model
from plasticnet.training.checkpoint import CheckpointError, load_checkpoint
from plasticnet.training.config import TrainConfig, load_run_config
from plasticnet.training.data import channel_statistics
from plasticnet.training.distributed import Distributed
from plasticnet.training.run_dir import BEST, LAST
from plasticnet.training.splits import load_data
from plasticnet.training.state import INPUT_STATISTICS

CHECKPOINTS = {"best": BEST, "last": LAST}


@dataclass
class RunCheckpoint:
    """A run's network as one checkpoint left it (on the CPU, in eval mode), with what it was trained
    on: the config, the per-channel input mean and std (1, C, 1, 1), and the input shape (C, H, W)."""

    model: nn.Module
    config: TrainConfig
    path: str
    epoch: int
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.config.image_size
        return (self.mean.shape[1], size, size)

    @property
    def num_classes(self) -> int:
        return self.model.fc.out_features


def load_run(run_dir: str, checkpoint: str = "best") -> tuple[nn.Module, TrainConfig]:
    """The network of RUN_DIR's best.pt (checkpoint="best") or last.pt ("last"), in eval mode on the
    CPU, and the run's config. A missing, damaged or foreign file is a ConfigError or CheckpointError
    naming it, as for `plasticnet train --resume`."""
    loaded = load_run_checkpoint(run_dir, checkpoint)
    return loaded.model, loaded.config


def load_run_checkpoint(run_dir: str, checkpoint: str = "best") -> RunCheckpoint:
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint: expected one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    config = load_run_config(run_dir)
    path = os.path.join(run_dir, CHECKPOINTS[checkpoint])
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state.get("model"), dict) or "fc.weight" not in state["model"]:
        raise CheckpointError(f"checkpoint {path} holds no network state; it is not a complete training checkpoint")
    model = build_model(config.replace(device="cpu"), num_classes=state["model"]["fc.weight"].shape[0])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as error:
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), type(error).__name__)
        raise CheckpointError(
            f"checkpoint {path} does not fit the network of {run_dir}/config.json ({first}); "
            "was it copied from another run?"
        ) from None
    mean, std = (state[key] for key in INPUT_STATISTICS) if INPUT_STATISTICS[0] in state else _statistics(config)
    return RunCheckpoint(model.eval(), config, path, state["epoch"], mean, std)


def _statistics(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The input normalisation of a checkpoint that predates recording it: recomputed from the
    run's training split exactly as the trainer computed it (the data must be where config says)."""
    device = torch.device("cpu")
    data = load_data(config.replace(device="cpu", download=False), Distributed("cpu"), device)
    return channel_statistics(data.train.images)
