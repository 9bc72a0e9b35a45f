"""The hand-written CUDA kernels (csrc/cuda/residual_aggregate.cu) in the cases the shared harness
(test_residual_aggregate.py) does not reach: pointers that break 16-byte alignment, more branches
than one launch's pointer table holds (8), more than 2**31 elements, bitwise determinism across
allocations, a non-default stream, another device, and CUDA-graph capture of forward + backward.
Everything here skips without a GPU or without plasticnet._C's CUDA kernels."""

import math

import pytest
import torch

from plasticnet.ops import (
    PathScores,
    available_backends,
    residual_aggregate,
    residual_aggregate_backward_reference,
    residual_aggregate_reference,
)
from plasticnet.ops.reference import accumulate_dtype

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in available_backends("cuda"),
    reason="needs a GPU and plasticnet._C built with its CUDA kernels",
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# 4551 elements: a multiple of no vector width (2, 4, 8 elements), so the scalar tail always runs.
SHAPE = (3, 37, 41)
forward_op = torch.ops.plasticnet.residual_aggregate
backward_op = torch.ops.plasticnet.residual_aggregate_backward


def _random(shape, dtype, offset=0, device="cuda"):
    """Standard-normal values in a view starting `offset` elements into its storage (1 breaks 16-byte alignment)."""
    return torch.randn(math.prod(shape) + offset, dtype=dtype, device=device)[offset:].view(shape)


def _operands(K, dtype, shape=SHAPE, offsets=None, device="cuda"):
    """x, K branches, gates and mask (some paths masked off); offsets[0] is x's, offsets[k + 1] branch k's."""
    offsets = offsets or [0] * (K + 1)
    x, *branches = (_random(shape, dtype, offset, device) for offset in offsets)
    gates = torch.randn(K, dtype=accumulate_dtype(dtype), device=device)
    mask = (torch.rand(K, device=device) > 0.25).to(gates.dtype)
    return x, branches, gates, mask


def _float64(tensors):
    return [t.double() for t in tensors]


def _assert_ops_match_reference(x, branches, gates, mask, grad_out, activation="relu"):
    """Both CUDA ops on the very same (possibly misaligned) inputs against the reference functions:
    y and the contributions against the float64 oracle; the gradient tensors against the reference
    in x's dtype, which rounds the very same fp32 products."""
    dtype = x.dtype
    out = forward_op(x, branches, gates, mask, activation)
    oracle = residual_aggregate_reference(x.double(), _float64(branches), gates.double(), mask.double(), activation)
    # fp32 accumulation rounded once to fp16/bf16: at most one ulp from the correctly rounded value.
    low_precision = dict(rtol=torch.finfo(dtype).eps, atol=1e-5) if dtype in (torch.float16, torch.bfloat16) else {}
    torch.testing.assert_close(out, oracle.to(dtype), **low_precision)

    grad_x, grad_branches, contributions = backward_op(grad_out, out, branches, gates, mask, activation)
    want_x, want_branches, _ = residual_aggregate_backward_reference(grad_out, out, branches, gates, mask, activation)
    torch.testing.assert_close(grad_x, want_x)
    torch.testing.assert_close(grad_branches, want_branches)
    *_, oracle_contributions = residual_aggregate_backward_reference(
        grad_out.double(), out.double(), _float64(branches), gates.double(), mask.double(), activation
    )
    # fp32 sums of ~4.5k terms of size ~1.
    fp32_sum = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(contributions, oracle_contributions.to(contributions.dtype), **fp32_sum)
    # No contribution wanted: no branch given or read (nor its alignment counted), the same gradients bit for bit.
    alone_x, alone_branches, no_contributions = backward_op(grad_out, out, [], gates, mask, activation)
    assert no_contributions.shape == (0,)
    torch.testing.assert_close(alone_x, grad_x, rtol=0, atol=0)
    torch.testing.assert_close(alone_branches, grad_branches, rtol=0, atol=0)


@pytest.mark.parametrize("misaligned", ("x", "one branch", "everything"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_views_take_the_scalar_path_correctly(dtype, misaligned):
    K = 3
    offsets = {"x": [1, 0, 0, 0], "one branch": [0, 0, 1, 0], "everything": [1] * (K + 1)}[misaligned]
    x, branches, gates, mask = _operands(K, dtype, offsets=offsets)
    grad_out = _random(SHAPE, dtype, offset=1 if misaligned == "everything" else 0)
    assert (x.data_ptr() % 16 != 0) == (misaligned != "one branch")
    _assert_ops_match_reference(x, branches, gates, mask, grad_out)


@pytest.mark.parametrize("activation", ("relu", "none"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", (9, 19))  # two launches; three (first, middle and last group)
def test_more_branches_than_one_launch_holds(K, dtype, activation):
    x, branches, gates, mask = _operands(K, dtype)
    _assert_ops_match_reference(x, branches, gates, mask, torch.randn_like(x), activation)


def test_more_than_2_31_elements():
    n = 2**31 + 2**10 + 3  # past int32 indexing, with a scalar tail
    bytes_needed = 7 * 2 * n  # x, h, out, grad_out, grad_x, grad_h in fp16, plus headroom for the checks
    if torch.cuda.mem_get_info()[0] < bytes_needed:
        pytest.skip(f"needs {bytes_needed / 2**30:.0f} GiB of free GPU memory")
    dtype = torch.float16
    x = torch.randn(n, dtype=dtype, device="cuda")
    # Positive terms: the contribution is large and every missing element would shift it visibly.
    h = torch.rand(n, dtype=dtype, device="cuda")
    grad_out = torch.rand(n, dtype=dtype, device="cuda")
    gates, mask = torch.randn(1, device="cuda"), torch.ones(1, device="cuda")
    out = forward_op(x, [h], gates, mask, "relu")
    grad_x, (grad_h,), contributions = backward_op(grad_out, out, [h], gates, mask, "relu")

    edges = [torch.arange(start, start + 4096, device="cuda") for start in (0, 2**31 - 2048, n - 4096)]
    idx = torch.cat([*edges, torch.randint(n, (1 << 16,), device="cuda")])
    torch.testing.assert_close(out[idx], residual_aggregate_reference(x[idx], [h[idx]], gates, mask, "relu"))
    want_x, (want_h,), _ = residual_aggregate_backward_reference(grad_out[idx], out[idx], [h[idx]], gates, mask, "relu")
    torch.testing.assert_close(grad_x[idx], want_x)
    torch.testing.assert_close(grad_h[idx], want_h)
    expected = sum(
        (grad_out[s].double() * (out[s] > 0) * h[s].double()).sum()
        for s in (slice(i, i + 2**26) for i in range(0, n, 2**26))
    )
    torch.testing.assert_close(contributions.double(), expected.reshape(1), rtol=1e-4, atol=0)


def test_results_are_bitwise_identical_across_runs_and_allocations():
    K = 11  # two launches per pass: the second group's partial sums too
    x, branches, gates, mask = _operands(K, torch.float32, shape=(4, 500, 1001))
    grad_out = torch.randn_like(x)

    def run(x, branches, grad_out):
        out = forward_op(x, branches, gates, mask, "relu")
        grad_x, grad_branches, contributions = backward_op(grad_out, out, branches, gates, mask, "relu")
        return [out, grad_x, *grad_branches, contributions]

    first = run(x, branches, grad_out)
    for again in (run(x, branches, grad_out), run(x.clone(), [h.clone() for h in branches], grad_out.clone())):
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_kernels_run_on_the_current_stream():
    x_values, branches, gates, mask = _operands(3, torch.float64, shape=(64, 4096))
    grad_values = torch.randn_like(x_values)
    x, grad_out = torch.zeros_like(x_values), torch.zeros_like(grad_values)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Delays the writes of x and grad_out on `side`: a kernel launched on any other stream would
        # run first and read the zeros.
        torch.cuda._sleep(100_000_000)
        x.copy_(x_values)
        grad_out.copy_(grad_values)
        out = forward_op(x, branches, gates, mask, "relu")
        grads = backward_op(grad_out, out, branches, gates, mask, "relu")
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, residual_aggregate_reference(x_values, branches, gates, mask, "relu"))
    torch.testing.assert_close(
        grads, residual_aggregate_backward_reference(grad_values, out, branches, gates, mask, "relu")
    )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_run_on_the_tensors_device_not_the_current_one():
    x, branches, gates, mask = _operands(3, torch.float64, device="cuda:1")
    with torch.cuda.device(0):
        _assert_ops_match_reference(x, branches, gates, mask, torch.randn_like(x))


def test_cuda_graph_replays_forward_and_backward():
    x, branches, gates, mask = _operands(3, torch.float64)
    grad_out = torch.randn_like(x)
    leaves = [x, *branches, gates]
    for t in leaves:
        t.requires_grad_()

    def step(backend, leaves):
        x, *branches, gates = leaves
        y = residual_aggregate(x, branches, gates, mask, backend=backend)
        return [y, *torch.autograd.grad(y, leaves, grad_out)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph asks
        step("cuda", leaves)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step("cuda", leaves)

    for _ in range(2):  # each replay must read the inputs' current values
        with torch.no_grad():
            for t in (*leaves, grad_out):
                t.copy_(torch.randn_like(t))
        graph.replay()
        expected = step("reference", [t.detach().clone().requires_grad_() for t in leaves])
        torch.testing.assert_close(captured, expected)


@pytest.mark.parametrize("backend", [b for b in ("cuda", "triton") if b in available_backends("cuda")])
def test_forward_and_backward_never_synchronise_with_the_host(backend):
    # set_sync_debug_mode("error") raises on any synchronising CUDA call (an .item(), a blocking copy);
    # a first call may compile or load kernels, so it runs before the mode is set.
    x, branches, gates, mask = _operands(3, torch.float32)
    leaves = [x, *branches, gates, mask]
    for t in leaves:
        t.requires_grad_()
    scores = PathScores(3, device="cuda")

    def step():
        y = residual_aggregate(x, branches, gates, mask, backend=backend, scores=scores, slots=(2, 0, 1))
        y.backward(torch.ones_like(y))

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(gates.grad).all() and (scores.updates == 2).all()


@pytest.mark.parametrize(
    "dtype, offset_bytes",
    [(d, b) for d in DTYPES for b in (8, 4, 2) if b % d.itemsize == 0],
    ids=lambda v: str(v).removeprefix("torch."),
)
def test_partly_aligned_views_take_the_widest_common_width(dtype, offset_bytes):
    # One branch offset by 8, 4 or 2 bytes sends every operand to accesses of that width; K = 11 runs
    # a full group and a partial one.
    K = 11
    offsets = [0] * (K + 1)
    offsets[2] = offset_bytes // dtype.itemsize
    x, branches, gates, mask = _operands(K, dtype, offsets=offsets)
    assert branches[1].data_ptr() % 16 == offset_bytes
    _assert_ops_match_reference(x, branches, gates, mask, torch.randn_like(x))
