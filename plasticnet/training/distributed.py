"""This process's place in a torchrun job, and the device it trains on."""

import os

import torch
import torch.distributed as dist
from torch import nn

from plasticnet.training.config import ConfigError


class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    def __init__(self, device_type: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def average_batch_norm_statistics(self, model: nn.Module) -> None:
        """Each rank's BN running statistics drift apart (buffers are not broadcast, see
        Trainer._wrap): average them so evaluation and checkpoints see one model."""
        if self.enabled:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                    for buffer in (module.running_mean, module.running_var):
                        dist.all_reduce(buffer)
                        buffer.div_(self.world_size)


def device_type(name: str) -> str:
    """ "cpu" or "cuda" for a --device value ("auto": cuda when visible)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(name).type
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None


def resolve_device(name: str, local_rank: int) -> torch.device:
    """The torch.device this process trains on (cuda:LOCAL_RANK under torchrun)."""
    device = torch.device(device_type(name) if name == "auto" else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
