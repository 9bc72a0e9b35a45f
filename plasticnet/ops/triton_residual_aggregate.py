"""Registers the Triton kernels (plasticnet/ops/triton_kernels.py) as the implementations of
plasticnet::residual_aggregate_triton and its backward, whose schemas live in csrc/plasticnet.cpp
and whose fake and autograd kernels live in residual_aggregate.py.

They are registered for CUDA always, and for CPU too when TRITON_INTERPRET=1, so that
residual_aggregate(..., backend="triton") on CPU tensors really runs the Triton kernels in the
interpreter. The ops are opaque to torch.compile, which calls these implementations at run time.
Without triton, or without the compiled extension that declares the ops, nothing is registered
and plasticnet.ops.backends reports the triton backend as unavailable.
"""

import importlib.util

import torch

from plasticnet import _extension
from plasticnet.ops.backends import triton_interpreted

# Kept for the life of the process: dropping the handle would deregister the kernels.
_library: torch.library.Library | None = None

if _extension.loaded and importlib.util.find_spec("triton") is not None:
    from plasticnet.ops import triton_kernels

    _library = torch.library.Library("plasticnet", "IMPL")
    for _dispatch_key in ("CUDA", "CPU") if triton_interpreted() else ("CUDA",):
        _library.impl("residual_aggregate_triton", triton_kernels.residual_aggregate_triton, _dispatch_key)
        _library.impl(
            "residual_aggregate_triton_backward", triton_kernels.residual_aggregate_triton_backward, _dispatch_key
        )
