"""Triton kernels for residual_aggregate and the launchers that implement the *_triton ops.

Requires triton (plasticnet/ops/triton_residual_aggregate.py imports this module only when it
is installed). The launchers take CPU tensors when TRITON_INTERPRET=1 was set before import,
which is how CI runs these kernels without a GPU.

Every tensor is walked as one flat array (the layout contract of csrc/layout.h): inputs that
do not share x's dense stride order are copied once into it, outputs are torch.empty_like of
the layout reference, exactly as the fake kernels in residual_aggregate.py promise.

The launchers call the kernels through torch.library.wrap_triton, so that torch.compile traces into
them (plasticnet/ops/triton_residual_aggregate.py makes them torch.library.triton_op ops). Each
kernel reads every branch once, with no stacked copy. One launch takes at most
MAX_BRANCHES_PER_PASS branches; more are chained in passes of that many, each further pass
costing one more read and write of N elements in the forward (which carries the running sum in
the accumulation dtype) and one more read in the backward (which re-reads dz from grad_x).
"""

import contextlib

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from plasticnet.ops.backends import triton_interpreted
from plasticnet.ops.reference import accumulate_dtype
from plasticnet.ops.residual_aggregate import backward_branch_count, check_inputs, check_like

MAX_BRANCHES_PER_PASS = 8


# One fixed configuration per kernel, chosen without timing: an autotuner times its candidates on
# the first call of every key, which synchronises the device (about a second) and cannot run inside
# CUDA graph capture; for the backward a timed choice could also differ between processes and so
# change the bits of the contributions (one partial per program, each a tl.sum whose tree follows
# the layout). 2048 elements over 8 warps: 8 per thread, two 16-byte accesses in fp32, one in
# fp16/bf16. Not yet measured on a GPU. The interpreter runs each program in numpy: one small block
# keeps CPU tests fast and still spreads odd test shapes over several programs (and a ragged last one).
BLOCK = 256 if triton_interpreted() else 2048
WARPS = 8


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


# The branches reach a kernel as MAX_BRANCHES_PER_PASS separate pointers, None past NUM_BRANCHES:
# torch.compile traces a kernel's tensor arguments one by one and cannot see into a tuple of them.
# Each helper below does its work for branch k only when k < NUM_BRANCHES, both known at compile time.


@triton.jit
def _scaled_branch(k: tl.constexpr, NUM_BRANCHES: tl.constexpr, h_ptr, scales_ptr, offsets, in_bounds, acc_type):
    """s_k * h_k as acc_type, 0 past the last branch."""
    value = 0
    if k < NUM_BRANCHES:
        value = tl.load(scales_ptr + k) * _load(h_ptr + offsets, in_bounds, acc_type)
    return value


@triton.jit
def _load_branch(k: tl.constexpr, NUM_BRANCHES: tl.constexpr, h_ptr, scales_ptr, offsets, in_bounds, acc_type):
    """(s_k, h_k) as acc_type, zeros past the last branch; h_k is not read without h_ptr (no contribution wanted)."""
    scale = 0
    value = 0
    if k < NUM_BRANCHES:
        scale = tl.load(scales_ptr + k)
        if h_ptr is not None:
            value = _load(h_ptr + offsets, in_bounds, acc_type)
    return scale, value


@triton.jit
def _branch_gradients(
    k: tl.constexpr, NUM_BRANCHES: tl.constexpr, scaled_h, dz, grad_h_ptr, partials_ptr, pid, row_stride, offsets, mask
):
    """grad h_k = s_k * dz, and, with partials_ptr (the contributions are wanted), stage one of c_k's
    reduction: this program's partial in its column pid, no atomics."""
    if k < NUM_BRANCHES:
        scale, h = scaled_h
        if partials_ptr is not None:
            tl.store(partials_ptr + pid + k * row_stride, tl.sum(dz * h, axis=0))
        _store(grad_h_ptr + offsets, scale * dz, mask)


@triton.jit
def _aggregate_forward_kernel(
    out_ptr,
    x_ptr,
    h0_ptr,
    h1_ptr,
    h2_ptr,
    h3_ptr,
    h4_ptr,
    h5_ptr,
    h6_ptr,
    h7_ptr,
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
    z += _scaled_branch(0, NUM_BRANCHES, h0_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(1, NUM_BRANCHES, h1_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(2, NUM_BRANCHES, h2_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(3, NUM_BRANCHES, h3_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(4, NUM_BRANCHES, h4_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(5, NUM_BRANCHES, h5_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(6, NUM_BRANCHES, h6_ptr, scales_ptr, offsets, in_bounds, acc_type)
    z += _scaled_branch(7, NUM_BRANCHES, h7_ptr, scales_ptr, offsets, in_bounds, acc_type)
    if RELU:
        z = tl.where(z < 0, 0, z)  # not tl.maximum, which may turn NaN into 0 on GPUs
    _store(out_ptr + offsets, z, in_bounds)


@triton.jit
def _aggregate_backward_kernel(
    grad_x_ptr,
    grad_h0_ptr,
    grad_h1_ptr,
    grad_h2_ptr,
    grad_h3_ptr,
    grad_h4_ptr,
    grad_h5_ptr,
    grad_h6_ptr,
    grad_h7_ptr,
    partials_ptr,
    grad_out_ptr,
    out_ptr,
    h0_ptr,
    h1_ptr,
    h2_ptr,
    h3_ptr,
    h4_ptr,
    h5_ptr,
    h6_ptr,
    h7_ptr,
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
    # Every load is issued before any store or reduction: to the compiler a store may alias a later
    # branch, and a reduction per branch between the loads would let each load start only after the
    # previous branch's sum.
    dz = _load(grad_out_ptr + offsets, in_bounds, acc_type)
    if RELU:
        # torch.relu's rule: the gradient passes where out is NaN
        dz = tl.where(_load(out_ptr + offsets, in_bounds, acc_type) <= 0, 0, dz)
    h0 = _load_branch(0, NUM_BRANCHES, h0_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h1 = _load_branch(1, NUM_BRANCHES, h1_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h2 = _load_branch(2, NUM_BRANCHES, h2_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h3 = _load_branch(3, NUM_BRANCHES, h3_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h4 = _load_branch(4, NUM_BRANCHES, h4_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h5 = _load_branch(5, NUM_BRANCHES, h5_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h6 = _load_branch(6, NUM_BRANCHES, h6_ptr, scales_ptr, offsets, in_bounds, acc_type)
    h7 = _load_branch(7, NUM_BRANCHES, h7_ptr, scales_ptr, offsets, in_bounds, acc_type)
    if grad_x_ptr is not None:
        _store(grad_x_ptr + offsets, dz, in_bounds)
    _branch_gradients(0, NUM_BRANCHES, h0, dz, grad_h0_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(1, NUM_BRANCHES, h1, dz, grad_h1_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(2, NUM_BRANCHES, h2, dz, grad_h2_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(3, NUM_BRANCHES, h3, dz, grad_h3_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(4, NUM_BRANCHES, h4, dz, grad_h4_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(5, NUM_BRANCHES, h5, dz, grad_h5_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(6, NUM_BRANCHES, h6, dz, grad_h6_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)
    _branch_gradients(7, NUM_BRANCHES, h7, dz, grad_h7_ptr, partials_ptr, pid, partials_row_stride, offsets, in_bounds)


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


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """One pass's tensors as the kernels' MAX_BRANCHES_PER_PASS pointer arguments, None past the last."""
    return [*tensors, *[None] * (MAX_BRANCHES_PER_PASS - len(tensors))]


def _check_device(t: torch.Tensor) -> None:
    if not (t.is_cuda or (t.device.type == "cpu" and triton_interpreted())):
        raise ValueError(
            "the triton backend takes CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
            f"got {t.device.type} tensors"
        )


def _passes(num_branches: int) -> list[slice]:
    """The branch ranges of the chained launches: one range, possibly empty, for K <= the maximum."""
    starts = range(0, num_branches, MAX_BRANCHES_PER_PASS) if num_branches else [0]
    return [slice(start, start + MAX_BRANCHES_PER_PASS) for start in starts]


def residual_aggregate_triton(
    x: torch.Tensor, branches: list[torch.Tensor], gates: torch.Tensor, mask: torch.Tensor, activation: str
) -> torch.Tensor:
    """y = act(x + sum_k mask[k]*gates[k]*branches[k]) by the Triton forward kernel."""
    check_inputs(x, branches, gates, mask, activation)
    _check_device(x)
    # empty_like keeps x's strides when x is dense, else picks the layout x suggests: the layout
    # every operand is walked in.
    out = torch.empty_like(x)
    x = _in_layout_of(x, out)
    branches = [_in_layout_of(h, out) for h in branches]
    scales = _slot_scales(x.dtype, gates, mask)
    n_elements = x.numel()
    if n_elements == 0:
        return out
    passes = _passes(len(branches))
    running = x
    with _device_of(x):
        for i, slots in enumerate(passes):
            last = i == len(passes) - 1
            # Between chained passes the running sum stays in the accumulation dtype.
            target = out if last else torch.empty_like(x, dtype=scales.dtype)
            wrap_triton(_aggregate_forward_kernel)[(triton.cdiv(n_elements, BLOCK),)](
                target,
                running,
                *_padded(branches[slots]),
                scales[slots],
                n_elements,
                NUM_BRANCHES=len(branches[slots]),
                RELU=last and activation == "relu",
                BLOCK=BLOCK,
                num_warps=WARPS,
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
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(grad_x, grad_branches, contributions) by the Triton backward kernel.

    With dz = grad_out * act'(out): grad_x = dz, grad_branches[k] = mask[k]*gates[k]*dz and
    contributions[k] = sum(dz * branches[k]) in fp32 (fp64 for fp64), for every slot; K is gates'
    length, and with no branches given (no contribution wanted) none is read and contributions is
    empty. The contributions are reduced deterministically: per-program partials, then a fixed-order sum.
    """
    K = backward_branch_count(branches, gates)
    check_inputs(out, branches, gates, mask, activation, x_name="out", num_branches=K)
    check_like("grad_out", grad_out, "out", out)
    _check_device(out)
    grad_x = torch.empty_like(out)
    out, grad_out = _in_layout_of(out, grad_x), _in_layout_of(grad_out, grad_x)
    branches = [_in_layout_of(h, grad_x) for h in branches]
    scales = _slot_scales(out.dtype, gates, mask)
    grad_branches = [torch.empty_like(out) for _ in range(K)]
    n_elements = out.numel()
    # One column per program, each written by its program for every branch.
    num_programs = triton.cdiv(n_elements, BLOCK)
    partials = torch.empty((len(branches), num_programs), dtype=scales.dtype, device=out.device)
    if n_elements > 0:
        with _device_of(out):
            for i, slots in enumerate(_passes(K)):
                first = i == 0
                # grad_x holds dz exactly (masking grad_out never rounds), so later passes read it
                # as their incoming gradient, with the activation already applied.
                wrap_triton(_aggregate_backward_kernel)[(num_programs,)](
                    grad_x if first else None,
                    *_padded(grad_branches[slots]),
                    partials[slots] if branches else None,
                    grad_out if first else grad_x,
                    out,
                    *_padded(branches[slots]),
                    scales[slots],
                    n_elements,
                    partials.stride(0),
                    NUM_BRANCHES=len(grad_branches[slots]),
                    RELU=first and activation == "relu",
                    BLOCK=BLOCK,
                    num_warps=WARPS,
                )
    # Stage two: a plain row sum over a buffer whose shape depends only on N and K, so the same
    # inputs give the same bits on every call, in every process.
    return grad_x, grad_branches, partials.sum(dim=1)
