"""Defines plasticnet::residual_aggregate_triton and its backward, implemented by the Triton kernels
of plasticnet/ops/triton_kernels.py, with the autograd and fake kernels of residual_aggregate.py.

On a GPU they are torch.library.triton_op ops: their launchers call the kernels through wrap_triton,
so torch.compile traces into them and sees the kernels themselves. Under TRITON_INTERPRET=1, where
the kernels run on CPU tensors in the interpreter, wrap_triton hands the interpreted kernels back
unwrapped and nothing could trace them: the same launchers are then plain custom ops, opaque to
torch.compile. Either way the ops need only triton, not the compiled extension. Without triton
nothing is defined and plasticnet.ops.backends reports the triton backend as unavailable.
"""

import importlib.util

import torch

from plasticnet.ops.backends import triton_interpreted
from plasticnet.ops.residual_aggregate import register_python_autograd

FORWARD = "plasticnet::residual_aggregate_triton"
BACKWARD = "plasticnet::residual_aggregate_triton_backward"

if importlib.util.find_spec("triton") is not None:
    from plasticnet.ops import triton_kernels

    _define = torch.library.custom_op if triton_interpreted() else torch.library.triton_op
    _define(FORWARD, triton_kernels.residual_aggregate_triton, mutates_args=())
    _define(BACKWARD, triton_kernels.residual_aggregate_triton_backward, mutates_args=())
    # A triton_op's own launcher is its fake kernel (run on fake tensors, wrap_triton launches nothing);
    # a custom op needs one, and both share the forward's autograd formula.
    register_python_autograd(FORWARD, BACKWARD, fake=triton_interpreted(), forward=True)
