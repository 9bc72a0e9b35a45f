"""The Triton kernels (plasticnet/ops/triton_kernels.py) against the plain-PyTorch reference.

Without a GPU they run on CPU tensors in the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before plasticnet is imported), so the shapes stay small and odd: several
programs per launch and a ragged last block. The GPU-only tests skip without CUDA. The shared
numerics harness (tests/test_residual_aggregate.py) covers the op's public surface.
"""

import inspect
import math
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from plasticnet import _extension  # noqa: E402
from plasticnet.ops import residual_aggregate, triton_kernels  # noqa: E402
from plasticnet.ops.backends import triton_interpreted  # noqa: E402
from plasticnet.ops.reference import (
    residual_aggregate_backward_reference,  # noqa: E402
    residual_aggregate_reference,
)

# CPU tensors need the interpreter; a test parametrised over no device at all is reported skipped.
DEVICES = [d for d, usable in (("cpu", triton_interpreted()), ("cuda", torch.cuda.is_available())) if usable]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_extension = pytest.mark.skipif(not _extension.loaded, reason=str(_extension.unavailable_reason))

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# One pass, one full pass, and two chained passes.
BRANCH_COUNTS = (0, 1, 3, triton_kernels.MAX_BRANCHES_PER_PASS, triton_kernels.MAX_BRANCHES_PER_PASS + 3)
ODD_SHAPE = (3, 5, 7, 11)  # 1155 elements: several interpreter blocks, the last one ragged


def make_operands(shape, num_branches, dtype, device, memory_format=torch.contiguous_format):
    """x, branches, gates and a mask with some paths off, all fresh random."""

    def draw():
        return torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)

    gates = torch.randn(num_branches, device=device)
    mask = (torch.rand(num_branches, device=device) > 0.3).float()
    return draw(), [draw() for _ in range(num_branches)], gates, mask


def assert_backward_matches_reference(grad_out, out, branches, gates, mask, activation, **contribution_tolerance):
    grad_x, grad_branches, contributions = triton_kernels.residual_aggregate_triton_backward(
        grad_out, out, branches, gates, mask, activation
    )
    expected_x, expected_branches, expected_contributions = residual_aggregate_backward_reference(
        grad_out, out, branches, gates, mask, activation
    )
    torch.testing.assert_close(grad_x, expected_x)
    assert len(grad_branches) == len(branches)
    for actual, expected in zip(grad_branches, expected_branches):
        torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(contributions, expected_contributions, **contribution_tolerance)
    for grad in (grad_x, *grad_branches):
        assert grad.stride() == torch.empty_like(out).stride()


# Low-precision outputs are compared in their own dtype at assert_close's defaults: one rounding
# apart at most (a GPU may fuse the multiply-adds that the reference rounds one by one).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "memory_format", (torch.contiguous_format, torch.channels_last), ids=("contiguous", "channels_last")
)
@pytest.mark.parametrize("activation", ("relu", "none"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_branches", BRANCH_COUNTS)
def test_forward_and_backward_match_reference(num_branches, dtype, activation, memory_format, device):
    x, branches, gates, mask = make_operands(ODD_SHAPE, num_branches, dtype, device, memory_format)
    out = triton_kernels.residual_aggregate_triton(x, branches, gates, mask, activation)
    expected = residual_aggregate_reference(x, branches, gates, mask, activation)
    torch.testing.assert_close(out, expected)
    assert out.stride() == x.stride()
    # The backward is fed the reference's output, so it is judged on its own.
    grad_out = torch.randn_like(expected)
    assert_backward_matches_reference(grad_out, expected, branches, gates, mask, activation)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_and_strided_layouts_are_copied_into_the_layout_of_x(device):
    x, branches, gates, mask = make_operands((4, 6, 5, 3), 3, torch.float32, device, torch.channels_last)
    # A contiguous branch (another stride order) and a non-dense one (every other column).
    branches[0] = branches[0].contiguous()
    branches[1] = torch.randn(4, 6, 5, 6, device=device)[..., ::2]
    out = triton_kernels.residual_aggregate_triton(x, branches, gates, mask, "relu")
    torch.testing.assert_close(out, residual_aggregate_reference(x, branches, gates, mask, "relu"))
    assert out.stride() == x.stride()

    grad_out = torch.randn(3, 5, 6, 4, device=device).permute(3, 2, 1, 0)  # dense, but in no layout of out
    assert_backward_matches_reference(grad_out, out, branches, gates, mask, "relu")

    strided_x = torch.randn(5, 14, device=device)[:, ::2]
    strided_branches = [torch.randn(5, 7, device=device)]
    out = triton_kernels.residual_aggregate_triton(strided_x, strided_branches, gates[:1], mask[:1], "none")
    torch.testing.assert_close(
        out, residual_aggregate_reference(strided_x, strided_branches, gates[:1], mask[:1], "none")
    )
    assert out.stride() == torch.empty_like(strided_x).stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_branches", (0, 2))
def test_empty_tensors(num_branches, device):
    x, branches, gates, mask = make_operands((0, 3), num_branches, torch.float32, device)
    out = triton_kernels.residual_aggregate_triton(x, branches, gates, mask, "relu")
    assert out.shape == (0, 3)
    grad_x, grad_branches, contributions = triton_kernels.residual_aggregate_triton_backward(
        out, out, branches, gates, mask, "relu"
    )
    assert grad_x.shape == (0, 3) and [g.shape for g in grad_branches] == [(0, 3)] * num_branches
    torch.testing.assert_close(contributions, torch.zeros(num_branches, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_contributions_are_bitwise_deterministic(device):
    x, branches, gates, mask = make_operands((9, 13, 17), 3, torch.float32, device)
    out = triton_kernels.residual_aggregate_triton(x, branches, gates, mask, "relu")
    grad_out = torch.randn_like(out)
    first = triton_kernels.residual_aggregate_triton_backward(grad_out, out, branches, gates, mask, "relu")[2]
    second = triton_kernels.residual_aggregate_triton_backward(grad_out, out, branches, gates, mask, "relu")[2]
    assert torch.equal(first, second)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_is_rounded_to_nearest_even_on_every_device(device):
    # One branch, x = +-1 and s*h = h/4 of bf16's ulp at 1: z is exact in fp32, so the outputs are
    # torch's own fp32 -> bf16 rounding of it, bit for bit: ties (h = 2 and 6, and -1 + 3/4 of the
    # ulp below 1) go to even, subnormals (the last two) stay, NaN stays NaN (payloads may differ).
    h = torch.tensor([1.0, 2.0, 3.0, 6.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0], device=device, dtype=torch.bfloat16)
    x = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, math.nan, math.inf, -math.inf], device=device).to(torch.bfloat16)
    x = torch.cat([x, torch.tensor([2.0**-130, -(2.0**-133)], device=device).to(torch.bfloat16)])
    gates, mask = torch.tensor([2.0**-9], device=device), torch.ones(1, device=device)
    out = triton_kernels.residual_aggregate_triton(x, [h], gates, mask, "none")
    expected = (x.float() + gates * h.float()).to(torch.bfloat16)
    number = ~expected.isnan()
    assert torch.equal(out.isnan(), ~number)
    assert out[number].view(torch.int16).tolist() == expected[number].view(torch.int16).tolist()
    assert out[:5].tolist() == [1.0, 1.0, 1.0 + 2.0**-7, 1.0 + 2.0**-6, -1.0 + 2.0**-7]
    # grad_branches = s * dz, rounded the same way; grad_x = dz is exact; subnormal outputs count as > 0.
    gates = torch.tensor([1.0 + 0.75 * 2.0**-7], device=device)
    grad_out = torch.ones_like(x)
    grad_x, (grad_h,), _ = triton_kernels.residual_aggregate_triton_backward(grad_out, x, [h], gates, mask, "relu")
    assert grad_h[0].item() == 1.0 + 2.0**-7  # truncation would give 1.0
    assert grad_x.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.skipif(not triton_interpreted(), reason="shows what the Triton interpreter's own casts do")
def test_the_interpreter_truncates_a_plain_bf16_cast():
    # Why the kernels convert bf16 from its bits: the interpreter's emulated fp32 -> bf16 cast
    # truncates where a GPU rounds to nearest even, and flushes subnormals to 0.
    @triton.jit
    def cast(out_ptr, in_ptr):
        offsets = triton.language.arange(0, 2)
        triton.language.store(out_ptr + offsets, triton.language.load(in_ptr + offsets).to(out_ptr.dtype.element_ty))

    values = torch.tensor([1.0 + 0.75 * 2.0**-7, 2.0**-130])
    out = torch.empty(2, dtype=torch.bfloat16)
    cast[(1,)](out, values)
    assert out.tolist() == [1.0, 0.0]
    assert values.to(torch.bfloat16).tolist() == [1.0 + 2.0**-7, 2.0**-130]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_rejects_a_grad_out_unlike_out(device):
    x, branches, gates, mask = make_operands((4, 5), 2, torch.float32, device)
    with pytest.raises(ValueError, match=r"grad_out: expected out's shape \(4, 5\), got \(5, 4\)"):
        triton_kernels.residual_aggregate_triton_backward(
            torch.ones(5, 4, device=device), x, branches, gates, mask, "relu"
        )
    with pytest.raises(TypeError, match="grad_out: expected out's dtype torch.float32, got torch.float64"):
        triton_kernels.residual_aggregate_triton_backward(x.double(), x, branches, gates, mask, "relu")


class LaunchCounter:
    """Counts the launches of one Triton kernel, passing each through."""

    def __init__(self, kernel, monkeypatch):
        self.launches = 0
        self._run = kernel.run
        monkeypatch.setattr(kernel, "run", self)

    def __call__(self, *args, **kwargs):
        self.launches += 1
        return self._run(*args, **kwargs)


@pytest.mark.skipif(not triton_interpreted(), reason="checks the interpreter path taken on CPU tensors")
@pytest.mark.parametrize("num_branches, passes", ((3, 1), (triton_kernels.MAX_BRANCHES_PER_PASS + 1, 2)))
def test_triton_backend_runs_the_interpreted_kernels_on_cpu(num_branches, passes, monkeypatch):
    kernels = (triton_kernels._aggregate_forward_kernel, triton_kernels._aggregate_backward_kernel)
    # Neither kernel is autotuned: both are the interpreted functions themselves.
    assert all(isinstance(kernel, InterpretedFunction) for kernel in kernels)
    forward, backward = (LaunchCounter(kernel, monkeypatch) for kernel in kernels)
    x, branches, gates, mask = make_operands(ODD_SHAPE, num_branches, torch.float32, "cpu")
    for t in (x, *branches, gates):
        t.requires_grad_()
    out = residual_aggregate(x, branches, gates, mask, backend="triton")
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert (forward.launches, backward.launches) == (passes, passes)
    torch.testing.assert_close(out, residual_aggregate_reference(x, branches, gates, mask))
    _, _, contributions = residual_aggregate_backward_reference(grad_out, out, branches, gates, mask, "relu")
    torch.testing.assert_close(gates.grad, mask * contributions)


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_fullgraph_with_the_triton_backend(device):
    x, branches, gates, mask = make_operands((2, 3, 5, 7), 3, torch.float32, device, torch.channels_last)
    leaves = (x, *branches, gates)

    def aggregate(x, branches, gates, mask):
        return residual_aggregate(x, branches, gates, mask, backend="triton")

    def run(fn):
        inputs = [t.detach().requires_grad_() for t in leaves]
        out = fn(inputs[0], inputs[1:-1], inputs[-1], mask)
        out.backward(torch.ones_like(out))
        return out, [t.grad for t in inputs]

    eager_out, eager_grads = run(aggregate)
    compiled_out, compiled_grads = run(torch.compile(aggregate, fullgraph=True))
    torch.testing.assert_close(compiled_out, eager_out, rtol=0, atol=0)
    torch.testing.assert_close(compiled_grads, eager_grads, rtol=0, atol=0)


# ---- no GPU needed: the kernels still compile to sm_90 machine code, as they would on an H100 ----


def compile_for_sm90(kernel, dtype: str, constexprs: dict, num_warps: int = 4):
    """Ahead-of-time compile of a kernel's source; the branch pointers h<k>_ptr and grad_h<k>_ptr
    past NUM_BRANCHES are None, the scales and partials are fp32 (fp64 for fp64 inputs)."""
    accumulate = "fp64" if dtype == "fp64" else "fp32"
    # The undecorated Python function, under whichever autotuner or interpreter wraps it.
    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn
    jit_function = JITFunction(fn)
    unused = {
        name: None
        for name in jit_function.arg_names
        if (match := re.fullmatch(r"(grad_)?h(\d)_ptr", name)) and int(match[2]) >= constexprs["NUM_BRANCHES"]
    }
    constexprs = {**unused, **constexprs}

    def arg_type(name):
        if name in constexprs:
            return "constexpr"
        if name in ("scales_ptr", "partials_ptr"):
            return f"*{accumulate}"
        return f"*{dtype}" if name.endswith("_ptr") else "i32"

    signature = {name: arg_type(name) for name in jit_function.arg_names}
    return triton.compile(
        ASTSource(jit_function, signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps},
    )


BACKWARD_PASSES = {"first": {"RELU": True}, "chained": {"RELU": False, "grad_x_ptr": None}}


SM90_DTYPES = ("fp32", "bf16", "fp16", "fp64")


@pytest.mark.skipif(
    triton_interpreted(), reason="run by test_kernels_compile_for_sm90 in a process without the interpreter"
)
@pytest.mark.parametrize("dtype", SM90_DTYPES)
def test_kernels_compile_for_sm90_in_this_process(dtype):
    # Both kernels in their one fixed configuration, with every branch and with a partial pass.
    fixed = {"BLOCK": triton_kernels.BLOCK}
    warps = triton_kernels.WARPS
    compiled = []
    for num_branches in (triton_kernels.MAX_BRANCHES_PER_PASS, 3):
        branches = {"NUM_BRANCHES": num_branches, **fixed}
        compiled.append(
            compile_for_sm90(triton_kernels._aggregate_forward_kernel, dtype, {**branches, "RELU": True}, warps)
        )
        passes = BACKWARD_PASSES.values() if dtype == "fp32" else [BACKWARD_PASSES["first"]]
        compiled += [
            compile_for_sm90(triton_kernels._aggregate_backward_kernel, dtype, {**branches, **p}, warps) for p in passes
        ]
    assert all(kernel.asm["cubin"] for kernel in compiled)
    # The backward issues every branch's load before its first reduction (a shuffle) or store.
    ptx = compiled[1].asm["ptx"]
    last_load = max(ptx.rfind(f"ld.global{suffix}") for suffix in (".v4", ".v2", "."))
    first_reduction = min(i for i in (ptx.find("shfl.sync"), ptx.find("st.global")) if i >= 0)
    assert 0 <= last_load < first_reduction


@pytest.mark.skipif(not triton_interpreted(), reason="test_kernels_compile_for_sm90_in_this_process runs here")
def test_kernels_compile_for_sm90():
    # Once an interpreted kernel has run, the interpreter's patches of triton.language stay in
    # the process and break the compiler: compile in a fresh process with the interpreter off.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_kernels_compile_for_sm90_in_this_process",
        ],
        env={**os.environ, "TRITON_INTERPRET": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and f"{len(SM90_DTYPES)} passed" in result.stdout, result.stdout + result.stderr


# ---- GPU only: sizes the interpreter cannot afford, autotuning ----


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_branches", (1, 8, 11))
def test_large_inputs_on_gpu(num_branches, dtype):
    x, branches, gates, mask = make_operands((8, 64, 96, 97), num_branches, dtype, "cuda", torch.channels_last)
    out = triton_kernels.residual_aggregate_triton(x, branches, gates, mask, "relu")
    torch.testing.assert_close(out, residual_aggregate_reference(x, branches, gates, mask, "relu"))
    grad_out = torch.randn_like(out)
    # Two fp32 sums of millions of terms in different orders differ by a random walk of roundings.
    assert_backward_matches_reference(
        grad_out, out, branches, gates, mask, "relu", rtol=1e-5, atol=1e-5 * out.numel() ** 0.5
    )
    first, second = (
        triton_kernels.residual_aggregate_triton_backward(grad_out, out, branches, gates, mask, "relu")[2]
        for _ in range(2)
    )
    assert torch.equal(first, second)


@needs_cuda
def test_a_new_size_is_captured_in_a_cuda_graph_on_gpu():
    # No autotuning: a size first seen inside capture (of a shape class Triton already compiled for:
    # not a multiple of 16) runs no timing that would synchronise, and the capture replays to the
    # eager results.
    def operands(numel):
        x, branches, gates, mask = make_operands((numel,), 3, torch.float32, "cuda")
        return x, branches, gates, mask, torch.randn_like(x)

    def both(x, branches, gates, mask, grad_out):
        out = triton_kernels.residual_aggregate_triton(x, branches, gates, mask, "relu")
        return out, triton_kernels.residual_aggregate_triton_backward(grad_out, out, branches, gates, mask, "relu")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    captured = operands(5 * 1237)
    with torch.cuda.stream(stream):
        both(*operands(3 * 1231))  # compiles the kernels outside the capture, at another size
        with torch.cuda.graph(graph, stream=stream):
            out, (grad_x, _, contributions) = both(*captured)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    expected_out, (expected_grad_x, _, expected_contributions) = both(*captured)
    assert torch.equal(out, expected_out) and torch.equal(grad_x, expected_grad_x)
    assert torch.equal(contributions, expected_contributions)
