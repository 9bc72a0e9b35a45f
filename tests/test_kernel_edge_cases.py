"""Kernel edge cases the shared harness (test_residual_aggregate.py) does not reach, for every
compiled backend present: non-finite incoming gradients where the relu is off, NaN and inf
inputs, low-precision pre-activations that round to 0, and many more branches than one launch
or pointer table takes, over a size that crosses the CPU kernel's reduction chunks."""

import math

import pytest
import torch

from plasticnet.ops import PathScores, available_backends, residual_aggregate, residual_aggregate_reference

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
SUBJECTS = [(backend, device) for device in DEVICES for backend in available_backends(device) if backend != "reference"]
# The CPU kernel reduces over chunks of this many elements (csrc/cpu/residual_aggregate.cpp).
CPU_CHUNK = 16384


def _subject_id(subject) -> str:
    return "-".join(subject)


def _leaves(shape, K, dtype, device):
    """x, K branches, gates and mask (one path masked off), all requiring grad."""
    scale_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    gates = torch.randn(K, dtype=scale_dtype, device=device)
    mask = torch.ones(K, dtype=scale_dtype, device=device)
    mask[K // 2] = 0.0
    tensors = [torch.randn(shape, dtype=dtype, device=device) for _ in range(K + 1)]
    return [t.requires_grad_() for t in (*tensors, gates, mask)]


def _forward_and_grads(backend, leaves, grad_out):
    """[y, grad of every leaf] of residual_aggregate on `backend`, backpropagating grad_out."""
    x, *branches, gates, mask = leaves
    y = residual_aggregate(x, branches, gates, mask, activation="relu", backend=backend)
    return [y, *torch.autograd.grad(y, leaves, grad_out)]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_non_finite_grad_out_where_relu_is_off_gives_zero_gradient(subject, dtype):
    # torch.relu's backward selects, so inf or NaN arriving where relu output 0 contributes nothing;
    # a kernel that multiplies by a 0/1 mask would turn it into NaN in every gradient instead.
    backend, device = subject
    leaves = _leaves((4, 257), 3, dtype, device)
    x, *branches, gates, mask = leaves
    with torch.no_grad():
        y = residual_aggregate(x, branches, gates, mask, backend="reference")
    off = y == 0
    assert 0 < off.sum() < y.numel()
    grad_out = torch.randn_like(y)
    grad_out[off] = torch.tensor([math.inf, -math.inf, math.nan], dtype=dtype, device=device).repeat(y.numel())[
        : int(off.sum())
    ]
    actual = _forward_and_grads(backend, leaves, grad_out)
    expected = _forward_and_grads("reference", leaves, grad_out)
    assert all(t.isfinite().all() for t in expected[1:])
    names = ["y", "grad x", "grad branches[0]", "grad branches[1]", "grad branches[2]", "grad gates", "grad mask"]
    for name, a, e in zip(names, actual, expected):
        # Same dtype rounding in both; the contributions are fp32 sums in another order.
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


def _with_non_finite_values(leaves):
    """NaN, inf and -inf in x and in two branches (one of them on a path masked off: 0 * inf is NaN)."""
    x, *branches, gates, mask = leaves
    specials = torch.tensor([math.nan, math.inf, -math.inf], dtype=x.dtype)
    with torch.no_grad():
        x[0, :3] = specials
        branches[0][1, 3:6] = specials
        branches[len(branches) // 2][2, :3] = specials  # the masked-off branch
    return leaves


def _torch_relu_join(leaves):
    """The node equation in plain PyTorch, fp32, its derivative torch.relu's own."""
    x, *branches, gates, mask = leaves
    return torch.relu(x + sum(m * g * h for h, g, m in zip(branches, gates, mask)))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_nan_and_inf_inputs_follow_torch_relu(subject, dtype):
    # torch.relu's backward passes the gradient wherever its output is not <= 0, NaN included.
    backend, device = subject
    leaves = _with_non_finite_values(_leaves((3, 67), 3, dtype, device))
    grad_out = torch.randn(leaves[0].shape, dtype=dtype, device=device)
    scores = {b: PathScores(3, device=device) for b in (backend, "reference")}
    results = {}
    for b in (backend, "reference"):
        x, *branches, gates, mask = leaves
        y = residual_aggregate(x, branches, gates, mask, backend=b, scores=scores[b])
        y.backward(grad_out)  # not autograd.grad, which would leave the scores' tap without its grad
        results[b] = [y, *(t.grad for t in leaves)]
        for t in leaves:
            t.grad = None
    actual, expected = results[backend], results["reference"]
    y, grad_x = expected[:2]
    assert y.isnan().any() and y.isinf().any() and (y == 0).any()
    assert torch.equal(grad_x[y.isnan()], grad_out[y.isnan()]) and (grad_x[y == 0] == 0).all()
    names = ["y", "grad x", "grad branches[0]", "grad branches[1]", "grad branches[2]", "grad gates", "grad mask"]
    for name, a, e in zip(names, actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}")
    # The scores record c, which grad mask is gates * c: NaN and inf alike.
    torch.testing.assert_close(scores[backend].last, scores["reference"].last, equal_nan=True, rtol=1e-3, atol=1e-3)
    assert scores["reference"].last.isnan().any()


def test_the_reference_differentiates_with_torch_relu():
    leaves = _with_non_finite_values(_leaves((3, 67), 3, torch.float32, "cpu"))
    grad_out = torch.randn(leaves[0].shape)
    x, *branches, gates, mask = leaves
    y = residual_aggregate_reference(x, branches, gates, mask, "relu")
    expected_y = _torch_relu_join(leaves)
    actual = [y, *torch.autograd.grad(y, leaves, grad_out)]
    expected = [expected_y, *torch.autograd.grad(expected_y, leaves, grad_out)]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, equal_nan=True)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("subject", [("reference", d) for d in DEVICES] + SUBJECTS, ids=_subject_id)
def test_a_pre_activation_that_rounds_to_zero_passes_no_gradient(subject, dtype):
    # The op sums in fp32, rounds to the dtype, then applies relu (the same value as rounding relu's
    # output): relu' is read off the rounded value, as in eager PyTorch, which sums in the dtype itself.
    # So x + s*h with s*h below the dtype's smallest subnormal gets no gradient, and one at it does.
    backend, device = subject
    smallest = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the smallest subnormal
    x = torch.zeros(4, dtype=dtype, device=device, requires_grad=True)
    h = torch.tensor([0.25, 1.0, 4.0, -1.0], dtype=dtype, device=device).requires_grad_()  # s*h < half, = 1, 4, < 0
    gate = torch.tensor([smallest], device=device)
    y = residual_aggregate(x, [h], gate, torch.ones(1, device=device), backend=backend)
    eager_y = torch.relu(x + gate.to(dtype) * h)
    assert torch.equal(y, eager_y) and y.tolist() == [0.0, smallest, 4 * smallest, 0.0]
    grad_out = torch.ones_like(y)
    (grad_x,) = torch.autograd.grad(y, x, grad_out)
    (eager_grad_x,) = torch.autograd.grad(eager_y, x, grad_out)
    assert torch.equal(grad_x, eager_grad_x) and grad_x.tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_forty_branches_over_several_reduction_chunks(subject):
    # No backend has a limit on K: the compiled ones chain launches of 8 branches, the CPU one keeps
    # one accumulator per branch. 2 chunks + 1 element: a chunk boundary and a one-element last chunk.
    backend, device = subject
    K = 40
    leaves = _leaves((2 * CPU_CHUNK + 1,), K, torch.float32, device)
    grad_out = torch.randn(leaves[0].shape, device=device)
    actual = _forward_and_grads(backend, leaves, grad_out)
    oracle_leaves = [t.detach().double().requires_grad_() for t in leaves]
    expected = _forward_and_grads("reference", oracle_leaves, grad_out.double())
    for a, e in zip(actual[: K + 2], expected):  # y, grad x, grad branches: one rounding each
        torch.testing.assert_close(a, e.float())
    # grad gates and grad mask are sums of 32769 terms of size ~1 each: fp32 summation error
    # stays far below 1e-5 of the sum of the terms' magnitudes.
    _, *branches, _, _ = oracle_leaves
    dz = grad_out.double() * (expected[0] > 0)
    term_sums = torch.stack([(dz * h.detach()).abs().sum() for h in branches])
    for a, e in zip(actual[K + 2 :], expected[K + 2 :]):
        assert ((a.double() - e).abs() <= 1e-5 * term_sums).all()


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_gates_and_mask_in_any_stride_and_floating_dtype(subject):
    # The kernels read gates and mask themselves: a strided view, and another dtype than the scales'.
    backend, device = subject
    x, *branches = (torch.randn(3, 77, device=device, requires_grad=True) for _ in range(4))
    gates = torch.randn(6, device=device, dtype=torch.float64)[::2].requires_grad_()
    mask = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 1.0], device=device, dtype=torch.bfloat16)[1::2].requires_grad_()
    grad_out = torch.randn(3, 77, device=device)
    leaves = [x, *branches, gates, mask]
    results = {}
    for b in (backend, "reference"):
        y = residual_aggregate(x, branches, gates, mask, backend=b)
        results[b] = [y, *torch.autograd.grad(y, leaves, grad_out)]
    for name, actual, expected in zip(["y", "x", "h0", "h1", "h2", "gates", "mask"], *results.values()):
        assert actual.dtype == expected.dtype, name
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
