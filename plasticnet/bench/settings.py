"""What one `plasticnet bench` run times: sizes, repeat counts, dtypes and backends, with a preset
per device type and --quick."""

from dataclasses import asdict, dataclass, replace

import torch

from plasticnet.bench.ops import (
    DEFAULT_DTYPES,
    DTYPES,
    RESNET18_CIFAR_ACTIVATIONS,
    OpCase,
    check_backends,
    default_backends,
    op_cases,
)
from plasticnet.bench.train_step import MODES


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """The cases of one run; a ValueError names the first value out of range by its CLI option.

    batch, stages and ks give the residual_aggregate cases (the first `stages` activation shapes
    of a CIFAR ResNet-18 at that batch, joining each K of `ks` branches); warmup and repeats
    apply to every measurement, except that the training step has its own train_repeats.
    An empty `backends` stands for the device's defaults (`resolved` fills them in).
    """

    batch: int
    stages: int = len(RESNET18_CIFAR_ACTIVATIONS)
    ks: tuple[int, ...] = (1, 2, 4)
    warmup: int
    repeats: int
    train_batch: int
    train_width: int
    train_modes: tuple[str, ...] = MODES
    train_repeats: int
    dtypes: tuple[str, ...] = DEFAULT_DTYPES
    backends: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("batch", "repeats", "train_batch", "train_width", "train_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_option(name)}: expected >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"--warmup: expected >= 0, got {self.warmup}")
        if not 1 <= self.stages <= len(RESNET18_CIFAR_ACTIVATIONS):
            raise ValueError(f"--stages: expected 1 to {len(RESNET18_CIFAR_ACTIVATIONS)}, got {self.stages}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"--ks: expected branch counts >= 1, got {list(self.ks)}")
        for name, known in (("train_modes", MODES), ("dtypes", tuple(DTYPES))):
            values = getattr(self, name)
            if not values or any(value not in known for value in values):
                raise ValueError(f"{_option(name)}: expected names from {list(known)}, got {list(values)}")

    def resolved(self, device: torch.device) -> "BenchSettings":
        """These settings with the device's default backends when none are named; a ValueError
        when a backend is unknown or cannot run on `device`."""
        settings = self if self.backends else replace(self, backends=tuple(default_backends(device)))
        check_backends(settings.backends, device)
        return settings

    def op_cases(self, device: torch.device) -> list[OpCase]:
        return op_cases(
            device,
            batch=self.batch,
            ks=self.ks,
            dtypes=[DTYPES[name] for name in self.dtypes],
            activations=RESNET18_CIFAR_ACTIVATIONS[: self.stages],
        )

    def to_json(self) -> dict:
        """The "settings" object of the JSON `plasticnet bench --json` writes."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _quick(settings: BenchSettings) -> BenchSettings:
    """--quick: one activation shape, K 1 and 4, the eager training step only."""
    return replace(settings, stages=1, ks=(1, 4), train_modes=("eager",))


# Sizes and repeat counts per (device type, quick). The GPU joins activations at a batch of 512
# and trains the full-width ResNet-18 at batch 256; the CPU runs sizes its 2 shared cores get
# through in minutes; --quick one shape in under a minute.
PRESETS = {
    ("cuda", False): BenchSettings(batch=512, warmup=5, repeats=50, train_batch=256, train_width=64, train_repeats=20),
    ("cpu", False): BenchSettings(batch=32, warmup=2, repeats=15, train_batch=32, train_width=16, train_repeats=5),
    ("cuda", True): _quick(
        BenchSettings(batch=64, warmup=2, repeats=10, train_batch=32, train_width=16, train_repeats=5)
    ),
    ("cpu", True): _quick(BenchSettings(batch=4, warmup=1, repeats=5, train_batch=8, train_width=8, train_repeats=3)),
}

# The overhead case (plasticnet/bench/overhead.py): each sample is the mean of `calls` calls, taken
# `samples` times after `warmup` rounds of `calls`. A tiny call costs tens of microseconds on CPU,
# single ones on a GPU's host, so a sample spans milliseconds either way.
OVERHEAD_PRESETS = {
    ("cpu", False): {"calls": 200, "warmup": 2, "samples": 21},
    ("cpu", True): {"calls": 50, "warmup": 1, "samples": 7},
    ("cuda", False): {"calls": 500, "warmup": 2, "samples": 21},
    ("cuda", True): {"calls": 100, "warmup": 1, "samples": 7},
}
