"""Fused residual aggregation, y = act(x + sum_k mask_k * gates_k * branches_k), and PathScores,
the per-site statistics of each branch's contribution that its backward accumulates."""

# registers the Triton kernels when triton is present
from plasticnet.ops import triton_residual_aggregate  # noqa: F401
from plasticnet.ops.backends import BACKENDS, available_backends, resolve_backend
from plasticnet.ops.reference import residual_aggregate_backward_reference, residual_aggregate_reference
from plasticnet.ops.residual_aggregate import ACTIVATIONS, residual_aggregate
from plasticnet.ops.scores import PathScores

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "PathScores",
    "available_backends",
    "resolve_backend",
    "residual_aggregate",
    "residual_aggregate_reference",
    "residual_aggregate_backward_reference",
]
