"""Helpers shared by several test files (tests/ is on sys.path under pytest's default import mode)."""

import subprocess
import sys

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics, so eval mode is not an identity map."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def tiny_synthetic_flags(**options) -> list[str]:
    """`plasticnet train` flags of a tiny run on synthetic data on the CPU, at width 4 unless told:
    each option name=value becomes --name value (True: --name, False: --no-name)."""
    flags = []
    for name, value in {"dataset": "synthetic", "device": "cpu", "base_width": 4, **options}.items():
        flag = name.replace("_", "-")
        flags += [f"--{flag}"] if value is True else [f"--no-{flag}"] if value is False else [f"--{flag}", str(value)]
    return flags


def plasticnet(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plasticnet", *map(str, argv)], capture_output=True, text=True)


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The single stderr line of a user's mistake, holding every needle."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)
    return done.stderr
