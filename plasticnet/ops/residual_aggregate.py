"""The public residual_aggregate: argument checks, backend dispatch, the fake (meta) kernels of the
compiled ops declared in csrc/plasticnet.cpp and the autograd formulas written in Python: the
backward ops' (for higher orders) and the Triton forward's. The compiled forward's autograd is C++
(csrc/autograd.cpp), since a Python one costs more per call than a small join's kernels."""

from collections.abc import Sequence

import torch

from plasticnet import _extension
from plasticnet.ops.backends import resolve_backend
from plasticnet.ops.reference import accumulate_dtype, relu_backward, residual_aggregate_reference

ACTIVATIONS = ("relu", "none")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_like(name: str, t, reference_name: str, reference: torch.Tensor) -> None:
    """t (called name) must be a Tensor with the shape, dtype and device of reference."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if t.shape != reference.shape:
        raise ValueError(f"{name}: expected {reference_name}'s shape {tuple(reference.shape)}, got {tuple(t.shape)}")
    if t.dtype != reference.dtype:
        raise TypeError(f"{name}: expected {reference_name}'s dtype {reference.dtype}, got {t.dtype}")
    if t.device != reference.device:
        raise ValueError(f"{name}: expected {reference_name}'s device {reference.device}, got {t.device}")


def check_inputs(x, branches, gates, mask, activation, x_name: str = "x", num_branches: int | None = None) -> None:
    """Raise TypeError/ValueError naming the argument, what it got and what was expected.
    x_name: what the caller calls x (the backward checks its `out` against the same contract).
    num_branches: the K that gates and mask must match, when `branches` may be empty (default: len(branches))."""
    K = len(branches) if num_branches is None else num_branches
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{x_name}: expected a Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{x_name}: expected dtype float32, bfloat16, float16 or float64, got {x.dtype}")
    for k, h in enumerate(branches):
        check_like(f"branches[{k}]", h, x_name, x)
    for name, v in (("gates", gates), ("mask", mask)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name}: expected a Tensor of shape ({K},), got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"{name}: expected a floating dtype, got {v.dtype}")
        if v.shape != (K,):
            raise ValueError(f"{name}: expected shape ({K},) (one per branch), got {tuple(v.shape)}")
        if v.device != x.device:
            raise ValueError(f"{name}: expected {x_name}'s device {x.device}, got {v.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {list(ACTIVATIONS)}, got {activation!r}")


def residual_aggregate(
    x: torch.Tensor,
    branches: Sequence[torch.Tensor],
    gates: torch.Tensor,
    mask: torch.Tensor,
    *,
    activation: str = "relu",
    backend: str | None = None,
    scores=None,
    slots: Sequence[int] | None = None,
) -> torch.Tensor:
    """y = act(x + sum_k mask[k] * gates[k] * branches[k]), in one fused pass forward and backward.

    x and every branch share shape, dtype (fp32, bf16, fp16, fp64) and device; any layout.
    gates, mask: floating tensors of shape (K,). Accumulation is fp32 (fp64 for fp64); y has
    x's dtype and layout. The backward also computes each branch's contribution
    c_k = sum(dz * branches[k]) and returns grad gates = mask*c and grad mask = gates*c.

    backend: None (fastest available for x's device), "reference", "cpu", "cuda" or "triton".
    scores: a plasticnet.ops.PathScores that records c_k after every backward, without
    host synchronisation; `slots` (distinct ints, only with scores) maps branch k to its slot
    (default: slot k).

    Differentiable to any order. A branch, gates or mask may be an inference tensor wherever
    the reference accepts one: autograd saves the branches only when gates or mask need a grad.
    """
    if slots is not None and scores is None:
        raise ValueError("slots: given without scores; slots say which slot of `scores` each branch feeds")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    backend = resolve_backend(backend, x.device)
    if backend == "reference" or scores is not None:
        check_types(branches, gates, mask)
    if backend == "reference":
        check_inputs(x, branches, gates, mask, activation)
    if scores is not None:
        gates = scores.tap(gates, slots)
    if backend == "reference":
        return residual_aggregate_reference(x, branches, gates, mask, activation)
    # The ops check their operands themselves (csrc/layout.h, the Triton launchers, the fake kernels), in
    # the same words: checking here as well would cost a small join as much as its kernel. Only an
    # operand that is no Tensor, which the dispatcher refuses in words that name no argument, is named
    # here, once the call has failed.
    try:
        return _OPS[backend](x, branches, gates, mask, activation)
    except (TypeError, RuntimeError):
        check_types(branches, gates, mask)
        raise


def check_types(branches, gates, mask) -> None:
    """What the dispatcher would refuse in words that name no argument: operands that are no Tensors."""
    if not isinstance(branches, (list, tuple)):
        raise TypeError(f"branches: expected a list or tuple of Tensors, got {type(branches).__name__}")
    for k, h in enumerate(branches):
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"branches[{k}]: expected a Tensor, got {type(h).__name__}")
    for name, v in (("gates", gates), ("mask", mask)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name}: expected a Tensor of shape ({len(branches)},), got {type(v).__name__}")


class _Ops(dict):
    """backend name -> its forward op, looked up on first use (the Triton op is defined after this module)."""

    def __missing__(self, backend: str):
        name = "residual_aggregate_triton" if backend == "triton" else "residual_aggregate"
        op = self[backend] = getattr(torch.ops.plasticnet, name).default
        return op


_OPS = _Ops()


# ---- registrations on the compiled ops (shared by the C++/CUDA and the Triton family) ----


def _fake_forward(x, branches, gates, mask, activation):
    # Meta outranks CPU in dispatch, so an op called directly with one meta operand lands here:
    # validate as the real kernels do instead of returning a tensor on the wrong device.
    check_inputs(x, branches, gates, mask, activation)
    # empty_like keeps x's strides when x is dense, else picks its suggested memory format:
    # exactly the layout the kernels write.
    return torch.empty_like(x)


def backward_branch_count(branches, gates) -> int:
    """The backward's K: its branches' count, or gates' length when it is given none (no contribution
    wanted), in the words of the compiled kernels' check when gates cannot say."""
    if branches or not isinstance(gates, torch.Tensor):  # check_inputs names a gates that is no Tensor
        return len(branches)
    if gates.dim() != 1:
        raise ValueError(f"gates: expected shape (K,) (one per branch), got {tuple(gates.shape)}")
    return gates.shape[0]


def _fake_backward(grad_out, out, branches, gates, mask, activation):
    K = backward_branch_count(branches, gates)
    check_inputs(out, branches, gates, mask, activation, x_name="out", num_branches=K)
    check_like("grad_out", grad_out, "out", out)
    return (
        torch.empty_like(out),
        [torch.empty_like(out) for _ in range(K)],
        out.new_empty((len(branches),), dtype=accumulate_dtype(out.dtype)),
    )


def _setup_context(ctx, inputs, output):
    x, branches, gates, mask, activation = inputs
    ctx.activation = activation
    # The branches serve only the contributions c, i.e. grad gates and grad mask: saved only then, as the
    # reference's autograd saves them, so that an inference tensor (which autograd cannot save) is a valid
    # branch exactly where it is in the reference. gates and mask are K scalars: an inference one is copied.
    ctx.wants_contributions = gates.requires_grad or mask.requires_grad
    gates, mask = (t.clone() if t.is_inference() else t for t in (gates, mask))
    ctx.save_for_backward(output, gates, mask, *(branches if ctx.wants_contributions else ()))


def _make_backward(backward_op):
    def backward(ctx, grad_out):
        # Without saved branches no c is wanted: the backward op, given none, computes none.
        out, gates, mask, *branches = ctx.saved_tensors
        grad_x, grad_branches, contributions = backward_op(grad_out, out, branches, gates, mask, ctx.activation)
        if not ctx.wants_contributions:
            return grad_x, list(grad_branches), None, None, None
        grad_gates = (mask.to(contributions.dtype) * contributions).to(gates.dtype)
        grad_mask = (gates.to(contributions.dtype) * contributions).to(mask.dtype)
        return grad_x, list(grad_branches), grad_gates, grad_mask, None

    return backward


def _setup_backward_context(ctx, inputs, output):
    _, out, branches, gates, mask, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(out, output[0], gates, mask, *branches)


def _backward_of_backward(ctx, grad_grad_x, grad_grad_branches, grad_contributions):
    """Second order: with dz = grad_x, the backward op's outputs dz, s_k*dz and c_k = sum(dz*h_k)
    are linear in dz, which is grad_out through relu'. relu' is piecewise constant, so `out`
    gets no gradient (as through torch.relu's own backward). Plain PyTorch, so torch
    differentiates it again for any higher order."""
    out, dz, gates, mask, *branches = ctx.saved_tensors  # no branches: no contributions were formed
    acc = accumulate_dtype(out.dtype)
    scales = mask.to(acc) * gates.to(acc)
    grad_dz = grad_grad_x.to(acc)
    for k, grad_grad_h in enumerate(grad_grad_branches):
        grad_dz = grad_dz + scales[k] * grad_grad_h.to(acc)
    for k, h in enumerate(branches):
        grad_dz = grad_dz + grad_contributions[k] * h.to(acc)
    grad_dz = grad_dz.to(out.dtype)
    grad_grad_out = relu_backward(grad_dz, out) if ctx.activation == "relu" else grad_dz
    dz = dz.to(acc)
    grad_scales = [(g.to(acc) * dz).sum() for g in grad_grad_branches]
    grad_scales = torch.stack(grad_scales) if grad_scales else scales.new_zeros(0)
    grad_branches = [(grad_contributions[k] * dz).to(out.dtype) for k in range(len(branches))]
    grad_gates = (mask.to(acc) * grad_scales).to(gates.dtype)
    grad_mask = (gates.to(acc) * grad_scales).to(mask.dtype)
    return grad_grad_out, None, grad_branches, grad_gates, grad_mask, None


def register_python_autograd(forward_op: str, backward_op: str, *, fake: bool, forward: bool) -> None:
    """The Python autograd formulas of a forward/backward op pair, the backward op's always, the forward
    op's only where it has none in C++ (`forward`); and their fake kernels when they have none (`fake`)."""
    if fake:
        torch.library.register_fake(forward_op)(_fake_forward)
        torch.library.register_fake(backward_op)(_fake_backward)
    if forward:
        namespace, name = backward_op.split("::")
        backward = getattr(getattr(torch.ops, namespace), name).default
        torch.library.register_autograd(forward_op, _make_backward(backward), setup_context=_setup_context)
    torch.library.register_autograd(backward_op, _backward_of_backward, setup_context=_setup_backward_context)


if _extension.loaded:
    register_python_autograd(
        "plasticnet::residual_aggregate", "plasticnet::residual_aggregate_backward", fake=True, forward=False
    )
