"""Compiling a network part by part, so that rewiring its topology never forces a recompile."""

from collections.abc import Iterable

import torch
from torch import nn


def compile_each(modules: Iterable[nn.Module], **options) -> None:
    """torch.compile every module on its own.

    Instances of one class share their forward's code object, and Dynamo caps the compiled
    variants kept per code object (`recompile_limit`, 8 by default). A ResNet has more
    distinct part shapes than that, each in train and eval mode, and past the cap the rest
    would silently run eagerly; so the cap is raised to cover every part in both modes.
    """
    modules = list(modules)
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 2 * len(modules))
    for module in modules:
        module.compile(**options)
