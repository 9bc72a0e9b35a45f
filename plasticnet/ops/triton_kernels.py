"""Triton kernels for residual_aggregate and the launchers that implement the *_triton ops.

Requires triton (plasticnet/ops/triton_residual_aggregate.py imports this module only when it
is installed). The launchers take CPU tensors when TRITON_INTERPRET=1 was set before import,
which is how CI runs these kernels without a GPU.

Every tensor is walked as one flat array (the layout contract of csrc/layout.h): inputs that
do not share x's dense stride order are copied once into it, outputs are torch.empty_like of
the layout reference, exactly as the fake kernels in residual_aggregate.py promise.

The branches reach a kernel as a tuple of tensors, which Triton specialises on its length:
each kernel reads every branch once, with no stacked copy. One launch takes at most
MAX_BRANCHES_PER_PASS branches; more are chained in passes of that many, each further pass
costing one more read and write of N elements in the forward (which carries the running sum in
the accumulation dtype) and one more read in the backward (which re-reads dz from grad_x).
"""

import contextlib

import torch
import triton
import triton.language as tl

from plasticnet.ops.backends import triton_interpreted
from plasticnet.ops.reference import accumulate_dtype
from plasticnet.ops.residual_aggregate import check_inputs, check_like

MAX_BRANCHES_PER_PASS = 8


# The interpreter runs each program in numpy: one small block keeps CPU tests fast and still
# spreads odd test shapes over several programs (and a ragged last block).
_FORWARD_CONFIGS = (
    [triton.Config({"BLOCK": 256})]
    if triton_interpreted()
    else [triton.Config({"BLOCK": block}, num_warps=warps) for block in (1024, 2048, 4096) for warps in (4, 8)]
)
# The backward is not autotuned: its block and warp count fix how the contributions are summed
# (one partial per program, each a tl.sum whose tree follows the layout), and a choice made by
# timing could differ between processes and so change their bits. A fixed configuration also
# gives the partials buffer one column per program; an autotuner benchmarking several block
# sizes on one buffer would leave the columns of a smaller block's run behind in it.
# Not yet measured on a GPU: 8 elements per thread, 16-byte accesses for fp16/bf16.
_BACKWARD_BLOCK = 256 if triton_interpreted() else 2048
_BACKWARD_WARPS = 8


# bf16 is fp32's upper half. The interpreter emulates its casts, truncating fp32 -> bf16 (a GPU
# rounds to nearest even) and flushing subnormals to 0 both ways: bf16 is converted from the bits
# here, with the GPU's results on both, so interpreted bf16 tests hold the kernels to GPU bits.


@triton.jit
def _load(ptrs, mask, acc_type):
    """Elements as acc_type (0 where masked off)."""
    value = tl.load(ptrs, mask=mask, other=0)
    if ptrs.dtype.element_ty == tl.bfloat16:
        value = (value.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return value.to(acc_type)


@triton.jit
def _store(ptrs, value, mask):
    """value in the pointers' dtype, rounded to nearest even; a NaN keeps its top bits, made quiet
    so that dropping the lower ones cannot turn it into inf."""
    if ptrs.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        upper = tl.where(value != value, (bits >> 16) | 0x40, rounded)
        value = upper.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)


@triton.autotune(configs=_FORWARD_CONFIGS, key=["n_elements", "NUM_BRANCHES"])
@triton.jit
def _aggregate_forward_kernel(
    out_ptr,
    x_ptr,
    branch_ptrs,
    scales_ptr,
    n_elements,
    NUM_BRANCHES: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < n_elements
    # The scales are stored in the accumulation dtype (fp32, fp64 for fp64 inputs).
    acc_type = scales_ptr.dtype.element_ty
    z = _load(x_ptr + offsets, in_bounds, acc_type)
    for k in tl.static_range(NUM_BRANCHES):
        z += tl.load(scales_ptr + k) * _load(branch_ptrs[k] + offsets, in_bounds, acc_type)
    if RELU:
        z = tl.where(z < 0, 0, z)  # not tl.maximum, which may turn NaN into 0 on GPUs
    _store(out_ptr + offsets, z, in_bounds)


@triton.jit
def _aggregate_backward_kernel(
    grad_x_ptr,
    grad_branch_ptrs,
    partials_ptr,
    grad_out_ptr,
    out_ptr,
    branch_ptrs,
    scales_ptr,
    n_elements,
    partials_row_stride,
    NUM_BRANCHES: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < n_elements
    acc_type = scales_ptr.dtype.element_ty
    dz = _load(grad_out_ptr + offsets, in_bounds, acc_type)
    if RELU:
        # torch.relu's rule: the gradient passes where out is NaN
        dz = tl.where(_load(out_ptr + offsets, in_bounds, acc_type) <= 0, 0, dz)
    if grad_x_ptr is not None:
        _store(grad_x_ptr + offsets, dz, in_bounds)
    for k in tl.static_range(NUM_BRANCHES):
        h = _load(branch_ptrs[k] + offsets, in_bounds, acc_type)
        # Stage one of the contribution reduction: one partial per (branch, program), no atomics.
        tl.store(partials_ptr + k * partials_row_stride + pid, tl.sum(dz * h, axis=0))
        grad_h = tl.load(scales_ptr + k) * dz
        _store(grad_branch_ptrs[k] + offsets, grad_h, in_bounds)


def _device_of(t: torch.Tensor):
    # Triton launches on the current CUDA device, which need not be the tensors' one.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _in_layout_of(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """t when it shares the dense reference's strides (and so is dense itself), else one copy of t
    into that layout."""
    return t if t.stride() == reference.stride() else torch.empty_like(reference).copy_(t)


def _slot_scales(dtype: torch.dtype, gates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s_k = mask_k * gates_k in the accumulation dtype, computed on the device: no host sync."""
    acc = accumulate_dtype(dtype)
    return (gates.to(acc) * mask.to(acc)).contiguous()


def _grid(n_elements: int):
    """One program per block of whatever size the autotuner picks."""
    return lambda meta: (triton.cdiv(n_elements, meta["BLOCK"]),)


def _passes(num_branches: int) -> list[slice]:
    """The branch ranges of the chained launches: one range, possibly empty, for K <= the maximum."""
    starts = range(0, num_branches, MAX_BRANCHES_PER_PASS) if num_branches else [0]
    return [slice(start, start + MAX_BRANCHES_PER_PASS) for start in starts]


def residual_aggregate_triton(
    x: torch.Tensor, branches: list[torch.Tensor], gates: torch.Tensor, mask: torch.Tensor, activation: str
) -> torch.Tensor:
    """y = act(x + sum_k mask[k]*gates[k]*branches[k]) by the Triton forward kernel."""
    check_inputs(x, branches, gates, mask, activation)
    # empty_like keeps x's strides when x is dense, else picks the layout x suggests: the layout
    # every operand is walked in.
    out = torch.empty_like(x)
    x = _in_layout_of(x, out)
    branches = [_in_layout_of(h, out) for h in branches]
    scales = _slot_scales(x.dtype, gates, mask)
    n_elements = x.numel()
    if n_elements == 0:
        return out
    grid = _grid(n_elements)
    passes = _passes(len(branches))
    running = x
    with _device_of(x):
        for i, slots in enumerate(passes):
            last = i == len(passes) - 1
            # Between chained passes the running sum stays in the accumulation dtype.
            target = out if last else torch.empty_like(x, dtype=scales.dtype)
            _aggregate_forward_kernel[grid](
                target,
                running,
                tuple(branches[slots]),
                scales[slots],
                n_elements,
                NUM_BRANCHES=len(branches[slots]),
                RELU=last and activation == "relu",
            )
            running = target
    return out


def residual_aggregate_triton_backward(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    branches: list[torch.Tensor],
    gates: torch.Tensor,
    mask: torch.Tensor,
    activation: str,
):
    """(grad_x, grad_branches, contributions) by the Triton backward kernel.

    With dz = grad_out * act'(out): grad_x = dz, grad_branches[k] = mask[k]*gates[k]*dz and
    contributions[k] = sum(dz * branches[k]) in fp32 (fp64 for fp64), for every slot. The
    contributions are reduced deterministically: per-program partials, then a fixed-order sum.
    """
    check_inputs(out, branches, gates, mask, activation, x_name="out")
    check_like("grad_out", grad_out, "out", out)
    grad_x = torch.empty_like(out)
    out, grad_out = _in_layout_of(out, grad_x), _in_layout_of(grad_out, grad_x)
    branches = [_in_layout_of(h, grad_x) for h in branches]
    scales = _slot_scales(out.dtype, gates, mask)
    grad_branches = [torch.empty_like(out) for _ in branches]
    n_elements = out.numel()
    # One column per program, each written by its program for every branch.
    num_programs = triton.cdiv(n_elements, _BACKWARD_BLOCK)
    partials = torch.empty((len(branches), num_programs), dtype=scales.dtype, device=out.device)
    if n_elements > 0:
        with _device_of(out):
            for i, slots in enumerate(_passes(len(branches))):
                first = i == 0
                # grad_x holds dz exactly (masking grad_out never rounds), so later passes read it
                # as their incoming gradient, with the activation already applied.
                _aggregate_backward_kernel[(num_programs,)](
                    grad_x if first else None,
                    tuple(grad_branches[slots]),
                    partials[slots],
                    grad_out if first else grad_x,
                    out,
                    tuple(branches[slots]),
                    scales[slots],
                    n_elements,
                    partials.stride(0),
                    NUM_BRANCHES=len(branches[slots]),
                    RELU=first and activation == "relu",
                    BLOCK=_BACKWARD_BLOCK,
                    num_warps=_BACKWARD_WARPS,
                )
    # Stage two: a plain row sum over a buffer whose shape depends only on N and K, so the same
    # inputs give the same bits on every call, in every process.
    return grad_x, grad_branches, partials.sum(dim=1)
