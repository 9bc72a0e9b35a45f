"""Every residual_aggregate backend present, against the plain-PyTorch reference in float64.

One parametrised harness (test_matches_reference) covers sizes, dtypes, layouts, K, gates and
mask values (zeros, negatives) and both activations, forward and backward; then gradcheck,
torch.library.opcheck, determinism and torch.compile. "reference" is the oracle, never a subject.
Interpreted Triton (CPU, TRITON_INTERPRET=1) is very slow, so it gets a grid of small shapes.
"""

from typing import NamedTuple

import pytest
import torch

from plasticnet.ops import (
    available_backends,
    residual_aggregate,
    residual_aggregate_backward_reference,
    residual_aggregate_reference,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
ACTIVATIONS = ("relu", "none")
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
SUBJECTS = [(backend, device) for device in DEVICES for backend in available_backends(device) if backend != "reference"]
# Pre-activations are kept at least this far from 0, so that the fp64 oracle and a subject whose
# rounding moves z slightly agree on which elements the relu lets through.
RELU_GAP = 0.05


def _is_interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def _subject_id(subject) -> str:
    return "-".join(subject)


class Case(NamedTuple):
    backend: str
    device: str
    shape: tuple
    dtype: torch.dtype
    layout: str  # contiguous | channels_last | transposed | strided | mixed (branches in other layouts than x)
    K: int
    activation: str

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        shape = "x".join(map(str, self.shape)) or "scalar"
        return f"{self.backend}-{self.device}-{shape}-{dtype}-{self.layout}-K{self.K}-{self.activation}"


def _grid(backend: str, device: str) -> list[Case]:
    """The cases one backend is held to: the full grid, or small shapes for interpreted Triton."""

    def case(shape, dtype=torch.float32, layout="contiguous", K=3, activation="relu"):
        return Case(backend, device, shape, dtype, layout, K, activation)

    if _is_interpreted(backend, device):
        return (
            [case((5, 7, 61), dtype, activation=act) for dtype in DTYPES for act in ACTIVATIONS]
            + [case((3, 50), K=K) for K in (0, 1, 5)]
            + [case((2, 3, 5, 7), layout=layout) for layout in ("channels_last", "transposed", "strided", "mixed")]
            + [case(shape, K=2) for shape in ((), (1,))]
        )
    odd = (5, 123, 123)
    return (
        [case(odd, dtype, K=K, activation=act) for dtype in DTYPES for K in (0, 1, 2, 3, 5, 8) for act in ACTIVATIONS]
        + [
            case((3, 7, 33, 65), dtype, layout, activation=act)
            for dtype in DTYPES
            for layout in ("channels_last", "transposed", "strided", "mixed")
            for act in ACTIVATIONS
        ]
        + [
            case(shape, K=5) for shape in ((), (1,), (1, 1, 1, 1), (0, 4), (7,), (3, 5461))
        ]  # 16383: one short of a CPU chunk
        + [
            case((1100, 1001), dtype, K=5, activation=act)  # > 1M elements
            for dtype, act in ((torch.float32, "relu"), (torch.bfloat16, "none"), (torch.float16, "relu"))
        ]
    )


CASES = [c for subject in SUBJECTS for c in _grid(*subject)]


def _random(shape, dtype, device, layout: str) -> torch.Tensor:
    """A standard-normal tensor of `shape` whose memory is laid out as `layout` says."""
    if layout == "channels_last":
        return torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # dense but not contiguous
        return torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype, device=device).transpose(-1, -2)
    if layout == "strided":  # not dense: every other element of a wider tensor
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)[..., ::2]
    return torch.randn(shape, dtype=dtype, device=device)


def _inputs(case: Case):
    """Fresh x, branches, gates, mask; gates and mask hold zeros and negatives; all require grad."""
    branch_layouts = ("channels_last", "transposed", "strided") if case.layout == "mixed" else (case.layout,)
    x = _random(case.shape, case.dtype, case.device, "contiguous" if case.layout == "mixed" else case.layout)
    branches = [
        _random(case.shape, case.dtype, case.device, branch_layouts[k % len(branch_layouts)]) for k in range(case.K)
    ]
    scale_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    gates = torch.randn(case.K, dtype=scale_dtype, device=case.device)
    if case.K >= 3:
        gates[-1] = 0.0
    mask = torch.tensor([1.0, 0.0, -0.5, 2.0], dtype=scale_dtype, device=case.device).repeat(case.K)[
        torch.randperm(case.K)
    ]
    if case.activation == "relu":
        with torch.no_grad():
            z = residual_aggregate_reference(
                x.double(), [h.double() for h in branches], gates.double(), mask.double(), "none"
            )
            x.add_(torch.where(z >= 0, RELU_GAP, -RELU_GAP).to(x.dtype))  # in place: keeps x's layout
    return [t.requires_grad_() for t in (x, *branches, gates, mask)]


def _run(fn, leaves, activation: str, grad_out: torch.Tensor):
    """[y, grad of every leaf] of y = fn(x, branches, gates, mask, activation), backpropagating grad_out."""
    x, *branches, gates, mask = leaves
    y = fn(x, branches, gates, mask, activation)
    grads = torch.autograd.grad(y, leaves, grad_out.to(y.dtype), allow_unused=True, materialize_grads=True)
    return [y, *grads]


def _detached_as(leaves, dtype):
    """Fresh leaves requiring grad: x and branches in `dtype`; gates and mask in float64 for a
    float64 `dtype`, else unchanged (they stay fp32 beside low-precision activations)."""
    *tensors, gates, mask = leaves
    scale_dtype = torch.float64 if dtype == torch.float64 else gates.dtype
    return [t.detach().to(dtype).requires_grad_() for t in tensors] + [
        v.detach().to(scale_dtype).requires_grad_() for v in (gates, mask)
    ]


# assert_close's default (rtol, atol) for the dtypes the subject's outputs are compared in.
DEFAULT_TOLERANCES = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}


def _error_scales(oracle_leaves, oracle_outputs, grad_out, activation):
    """Per output, what its rounding error is proportional to, elementwise. |value| for the elementwise
    outputs (assert_close's rule). grad gates and grad mask are sums over every element (m_k·c_k and
    g_k·c_k, c_k = Σ dz·h_k): their error scales with the sum of the terms' magnitudes, |m_k|·Σ|dz·h_k|
    and |g_k|·Σ|dz·h_k|, as cancellation can leave c_k far smaller than its terms' rounding."""
    _, *branches, gates, mask = [t.detach() for t in oracle_leaves]
    oracle_y = oracle_outputs[0].detach()
    dz = grad_out.double() * (oracle_y > 0) if activation == "relu" else grad_out.double()
    term_sums = torch.stack([(dz * h).abs().sum() for h in branches]) if branches else gates.new_zeros(0)
    magnitudes = [t.detach().abs() for t in oracle_outputs]
    return magnitudes[:-2] + [
        torch.maximum(magnitudes[-2], mask.abs() * term_sums),
        torch.maximum(magnitudes[-1], gates.abs() * term_sums),
    ]


def _max_error(actual, expected) -> float:
    return (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0


def _assert_close(name, actual, expected, scale):
    """assert_close at its default tolerances for actual's dtype, relative to `scale`."""
    rtol, atol = DEFAULT_TOLERANCES[actual.dtype]
    error = (actual.double() - expected.double()).abs()
    assert actual.dtype == expected.dtype and bool((error <= atol + rtol * scale).all()), (
        f"{name}: max error {_max_error(actual, expected):.3g} exceeds {atol} + {rtol} x scale"
    )


def _assert_no_worse_than_eager(name, actual, eager, expected, scale):
    """Low precision: the subject's max error at most twice eager PyTorch's in the same dtype, plus
    fp32-accumulation slack (both round an fp32 sum; near a tie they may round it apart)."""
    rtol, atol = DEFAULT_TOLERANCES[torch.float32]
    slack = atol + rtol * (scale.max().item() if scale.numel() else 0.0)
    error, eager_error = _max_error(actual, expected), _max_error(eager, expected)
    assert actual.dtype == eager.dtype and error <= 2 * eager_error + slack, (
        f"{name}: max error {error:.3g}, eager PyTorch's in the same dtype {eager_error:.3g}"
    )


@pytest.fixture
def poisoned_allocations():
    """Fill every fresh allocation with NaN (PyTorch's deterministic mode does), so an output element
    that a kernel never writes shows up as NaN rather than as stale memory that happens to be right."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case: Case, poisoned_allocations):
    leaves = _inputs(case)
    # grad_out in the case's layout too (not dense for "mixed"), as autograd may hand any layout over.
    grad_out = _random(case.shape, torch.float32, case.device, "strided" if case.layout == "mixed" else case.layout)

    def subject(x, branches, gates, mask, activation):
        return residual_aggregate(x, branches, gates, mask, activation=case.activation, backend=case.backend)

    outputs = _run(subject, leaves, case.activation, grad_out)
    oracle_leaves = _detached_as(leaves, torch.float64)
    expected = _run(residual_aggregate_reference, oracle_leaves, case.activation, grad_out)
    scales = _error_scales(oracle_leaves, expected, grad_out, case.activation)
    names = ["y", "grad x", *(f"grad branches[{k}]" for k in range(case.K)), "grad gates", "grad mask"]
    if case.dtype in (torch.float32, torch.float64):
        for name, actual, oracle, scale in zip(names, outputs, expected, scales):
            _assert_close(name, actual, oracle.to(actual.dtype), scale)
    else:
        eager = _run(residual_aggregate_reference, _detached_as(leaves, case.dtype), case.activation, grad_out)
        for name, actual, eager_output, oracle, scale in zip(names, outputs, eager, expected, scales):
            _assert_no_worse_than_eager(name, actual, eager_output, oracle, scale)
    x = leaves[0]
    if case.layout != "strided":  # dense x: every output is laid out like x
        assert [t.stride() for t in outputs[: 2 + case.K]] == [x.stride()] * (2 + case.K)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_gradcheck(subject, activation):
    backend, device = subject
    K = 3
    leaves = _inputs(Case(backend, device, (2, 3, 5), torch.float64, "contiguous", K, activation))

    def fn(x, *rest):
        return residual_aggregate(x, rest[:K], rest[K], rest[K + 1], activation=activation, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("scales_need_grad", (True, False), ids=("all-leaves", "gates-and-mask-fixed"))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_gradgradcheck(subject, activation, scales_need_grad):
    # Second order, e.g. a penalty on the gradient: without gates and mask to differentiate, the
    # first backward saves no branches, and the second must still be right.
    backend, device = subject
    K = 2
    x, *branches, gates, mask = _inputs(Case(backend, device, (2, 3, 5), torch.float64, "contiguous", K, activation))
    gates.requires_grad_(scales_need_grad), mask.requires_grad_(scales_need_grad)

    def fn(x, *rest):
        g, m = rest[K:] if scales_need_grad else (gates, mask)
        return residual_aggregate(x, rest[:K], g, m, activation=activation, backend=backend)

    leaves = (x, *branches, gates, mask) if scales_need_grad else (x, *branches)
    assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_third_order_gradients_match_reference(subject):
    backend, device = subject
    leaves = _inputs(Case(backend, device, (3, 4), torch.float64, "contiguous", 2, "none"))

    def third_order(backend):
        x, *branches, gates, mask = leaves
        y = residual_aggregate(x, branches, gates, mask, activation="none", backend=backend)
        (first,) = torch.autograd.grad(y.square().sum(), gates, create_graph=True)
        (second,) = torch.autograd.grad(first.square().sum(), branches[0], create_graph=True)
        return torch.autograd.grad(second.sum(), leaves, allow_unused=True, materialize_grads=True)

    for actual, expected in zip(third_order(backend), third_order("reference")):
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_inference_tensors_work_wherever_the_reference_takes_them(subject):
    backend, device = subject
    case = Case(backend, device, (3, 5, 7), torch.float32, "contiguous", 2, "relu")
    x, *branches, gates, mask = [t.detach() for t in _inputs(case)]

    def run(backend, x, branches, gates, mask):
        return residual_aggregate(x, branches, gates, mask, backend=backend)

    with torch.inference_mode():
        y = run(backend, x, branches, gates, mask)
        inference = [t.clone() for t in (*branches, gates, mask)]
    assert y.is_inference()
    torch.testing.assert_close(y, run("reference", x, branches, gates, mask))
    # Outside inference mode, inference branches, gates and mask beside an x that requires grad.
    *inference_branches, inference_gates, inference_mask = inference
    results = {}
    for b in (backend, "reference"):
        x_leaf = x.clone().requires_grad_()
        out = run(b, x_leaf, inference_branches, inference_gates, inference_mask)
        results[b] = (out, *torch.autograd.grad(out, x_leaf, torch.ones_like(out)))
    for actual, expected in zip(results[backend], results["reference"]):
        torch.testing.assert_close(actual, expected)
    # Gates needing a grad need the branches saved, which autograd refuses for inference tensors.
    for b in (backend, "reference"):
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            run(b, x, inference_branches, gates.clone().requires_grad_(), mask)


def _op_family(backend: str):
    """(forward op, backward op) a backend runs on."""
    suffix = "_triton" if backend == "triton" else ""
    return (
        getattr(torch.ops.plasticnet, f"residual_aggregate{suffix}").default,
        getattr(torch.ops.plasticnet, f"residual_aggregate{suffix}_backward").default,
    )


OPCHECK_SAMPLES = [  # (shape, dtype, layout, K, activation)
    ((2, 3, 5, 7), torch.float32, "contiguous", 2, "relu"),
    ((4,), torch.float64, "contiguous", 0, "none"),
    ((2, 3, 5, 7), torch.bfloat16, "channels_last", 3, "relu"),
    ((3, 5, 6), torch.float16, "strided", 1, "none"),
]


@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=lambda s: str(Case("", "", *s)).strip("-"))
@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_opcheck(subject, sample):
    backend, device = subject
    forward, backward = _op_family(backend)
    case = Case(backend, device, *sample)
    x, *branches, gates, mask = _inputs(case)
    torch.library.opcheck(forward, (x, branches, gates, mask, case.activation))
    with torch.no_grad():
        out = forward(x, branches, gates, mask, case.activation)
    # Inputs that require grad: the backward op has an autograd formula of its own (second order).
    grad_out = torch.randn_like(out).requires_grad_()
    torch.library.opcheck(backward, (grad_out, out, branches, gates, mask, case.activation))
    # No contribution wanted: no branches, and gates say how many gradients to return.
    torch.library.opcheck(backward, (grad_out, out, [], gates, mask, case.activation))


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_backward_without_branches_computes_no_contributions(subject, poisoned_allocations):
    # What the forward's autograd asks for when no gate or mask needs a gradient: the same branch
    # gradients, bit for bit, and no contribution (the kernels read no branch).
    backend, device = subject
    _, backward = _op_family(backend)
    case = Case(backend, device, (3, 5, 7), torch.float32, "contiguous", 3, "relu")
    out, *branches, gates, mask = [t.detach() for t in _inputs(case)]
    grad_out = torch.randn_like(out)
    grad_x, grad_branches, contributions = backward(grad_out, out, [], gates, mask, "relu")
    want_x, want_branches, want_contributions = backward(grad_out, out, branches, gates, mask, "relu")
    assert contributions.shape == (0,) and contributions.dtype == want_contributions.dtype
    assert len(grad_branches) == len(want_branches) == 3
    for actual, expected in zip([grad_x, *grad_branches], [want_x, *want_branches]):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    ref_x, ref_branches, ref_contributions = residual_aggregate_backward_reference(grad_out, out, [], gates, mask)
    torch.testing.assert_close(grad_x, ref_x)
    assert ref_contributions.shape == (0,) and len(ref_branches) == 3


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_deterministic_across_runs_and_thread_counts(subject):
    backend, device = subject
    # Large enough for many reduction chunks (where thread count could change the summation order).
    shape = (37, 101) if _is_interpreted(backend, device) else (3, 333, 1001)
    case = Case(backend, device, shape, torch.float32, "contiguous", 3, "relu")
    leaves = _inputs(case)
    grad_out = torch.randn(shape, device=device)

    def results(threads: int):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _run(
                lambda *a: residual_aggregate(*a[:4], activation=a[4], backend=backend), leaves, "relu", grad_out
            )
        finally:
            torch.set_num_threads(previous)

    first = results(2)
    for again in (results(2), results(1)):
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("subject", SUBJECTS, ids=_subject_id)
def test_inside_torch_compile_fullgraph(subject):
    backend, device = subject
    case = Case(backend, device, (3, 5, 7), torch.float32, "contiguous", 2, "relu")

    def block(x, h0, h1, gates, mask):
        return residual_aggregate(x * 0.5, [h0, h1], gates, mask, activation="relu", backend=backend).square()

    leaves = _inputs(case)
    grad_out = torch.randn(case.shape, device=device)
    eager = _run(lambda x, b, g, m, a: block(x, *b, g, m), leaves, "relu", grad_out)
    compiled_block = torch.compile(block, fullgraph=True)
    compiled = _run(lambda x, b, g, m, a: compiled_block(x, *b, g, m), leaves, "relu", grad_out)
    for actual, expected in zip(compiled, eager):
        torch.testing.assert_close(actual, expected)
