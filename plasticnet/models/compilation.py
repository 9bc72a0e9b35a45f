"""Compiling a network part by part, so that rewiring its topology never forces a recompile."""

from collections.abc import Iterable

import torch
from torch import nn


def compile_each(modules: Iterable[nn.Module], **options) -> None:
    """torch.compile every module on its own, in place (as nn.Module.compile does).

    Instances of one class share their forward's code object, and Dynamo caps the compiled
    variants kept per code object (`recompile_limit`, 8 by default). A ResNet has more
    distinct part shapes than that, each in train and eval mode, and past the cap the rest
    would silently run eagerly. So each part's compiled call runs with the cap raised to
    cover every part in both modes; outside those calls Dynamo's configuration, and so the
    caller's own compiled code, is left as it was.
    """
    modules = list(modules)
    limit = max(torch._dynamo.config.recompile_limit, 2 * len(modules))
    for module in modules:
        compiled = torch.compile(module._call_impl, **options)

        def call(*args, _compiled=compiled, **kwargs):
            with torch._dynamo.config.patch(recompile_limit=limit):
                return _compiled(*args, **kwargs)

        # the slot nn.Module.compile() fills: module(...) then runs the compiled call
        module._compiled_call_impl = call
