"""residual_aggregate micro-benchmarks: the cases, their rotated inputs and the steps that
`plasticnet bench` times and that benchmarks/test_bench_ops.py hands to pytest-benchmark."""

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from plasticnet.bench.timing import Step, Timing, measure
from plasticnet.ops import available_backends, residual_aggregate, residual_aggregate_reference

# (channels, height, width) of the activations joined in each stage of a CIFAR ResNet-18 at base width 64.
RESNET18_CIFAR_ACTIVATIONS = ((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4))
BASELINES = ("eager", "compile")
FUSED_BACKENDS = ("cpu", "triton", "cuda")
BENCH_BACKENDS = FUSED_BACKENDS + BASELINES
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_DTYPES = ("float32", "bfloat16")
PASSES = ("fwd", "bwd", "fwd_bwd")
# Input sets rotate until together they span this multiple of the last-level cache, so every
# repeat streams from memory as it would inside a network...
_CACHE_MULTIPLE = 2
# ...up to this many sets, which bounds the memory tiny shapes take.
_MAX_SETS = 64


def default_backends(device: torch.device) -> list[str]:
    """Every fused backend that runs natively on `device`, then the eager and compiled reference.

    Triton on CPU tensors only exists under TRITON_INTERPRET=1: timing an interpreter says
    nothing about the kernel, so it runs only when asked for by name.
    """
    fused = [b for b in available_backends(device) if b in FUSED_BACKENDS]
    if device.type == "cpu":
        fused = [b for b in fused if b != "triton"]
    return fused + list(BASELINES)


def check_backends(backends: Sequence[str], device: torch.device) -> None:
    """ValueError naming the backend when one is unknown or cannot run on `device`."""
    available = set(available_backends(device)) | set(BASELINES)
    for backend in backends:
        if backend not in BENCH_BACKENDS:
            raise ValueError(f"backends: expected names from {list(BENCH_BACKENDS)}, got {backend!r}")
        if backend not in available:
            raise ValueError(
                f"backends: {backend!r} is unavailable on {device.type} "
                f"(available: {sorted(available & set(BENCH_BACKENDS))})"
            )


@dataclass(frozen=True)
class OpCase:
    """One residual_aggregate configuration: K branches joined onto x of `shape` and `dtype`."""

    K: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def size_key(self) -> str:
        """'dtype:numel', the key of the copy bandwidth this case is compared with."""
        return f"{self.dtype_name}:{self.numel}"

    def pass_bytes(self, which: str) -> int:
        """Bytes the op must move (docs/design.md section 2): forward reads x and K branches and writes y;
        backward reads dy, y and K branches and writes dx and K branch gradients."""
        forward = self.K + 2
        backward = (self.K + 2) + (self.K + 1)
        elements = {"fwd": forward, "bwd": backward, "fwd_bwd": forward + backward}[which]
        return elements * self.numel * self.dtype.itemsize


def op_cases(
    device: torch.device,
    *,
    batch: int,
    ks: Sequence[int],
    dtypes: Sequence[torch.dtype],
    activations: Sequence[tuple[int, int, int]] = RESNET18_CIFAR_ACTIVATIONS,
) -> list[OpCase]:
    return [OpCase(K, (batch, *chw), dtype, device) for chw, dtype, K in itertools.product(activations, dtypes, ks)]


def aggregate_function(backend: str) -> Callable:
    """(x, branches, gates, mask, activation=...) -> y for a benchmark backend name."""
    if backend == "eager":
        return residual_aggregate_reference
    if backend == "compile":
        # Each case is one (K, shape, dtype) specialisation; a fresh dynamo state keeps the
        # cases from piling up recompilations of the same function until dynamo falls back to eager.
        torch._dynamo.reset()
        return torch.compile(residual_aggregate_reference)
    return functools.partial(residual_aggregate, backend=backend)


def rotation_sets(set_bytes: int, cache_bytes: int) -> int:
    """How many input sets to rotate through so they exceed the cache (at least two)."""
    return max(2, min(_MAX_SETS, math.ceil(_CACHE_MULTIPLE * cache_bytes / set_bytes)))


@dataclass
class _Inputs:
    x: torch.Tensor
    branches: list[torch.Tensor]
    gates: torch.Tensor
    mask: torch.Tensor
    grad_out: torch.Tensor

    @property
    def differentiable(self) -> list[torch.Tensor]:
        # The gates take a gradient as in training: their contributions are the plasticity signal.
        return [self.x, *self.branches, self.gates]


class OpWorkload:
    """A case on one backend: rotated input sets and the forward, backward and full-pass steps."""

    def __init__(self, case: OpCase, backend: str, *, cache_bytes: int):
        self.case = case
        self.backend = backend
        self.function = aggregate_function(backend)
        self.cache_bytes = cache_bytes
        set_bytes = (case.K + 2) * case.numel * case.dtype.itemsize
        self.sets = [self._random_inputs() for _ in range(rotation_sets(set_bytes, cache_bytes))]
        self._pending: torch.Tensor | None = None
        self._cache_flush: torch.Tensor | None = None
        self.fwd_bwd(0)  # compiles ("compile") and loads kernels before anything is timed

    def _random_inputs(self) -> _Inputs:
        case = self.case

        def tensor():
            return torch.randn(case.shape, dtype=case.dtype, device=case.device, requires_grad=True)

        gates = (torch.rand(case.K, device=case.device) + 0.5).requires_grad_()
        return _Inputs(
            tensor(),
            [tensor() for _ in range(case.K)],
            gates,
            torch.ones(case.K, device=case.device),
            torch.randn(case.shape, dtype=case.dtype, device=case.device),
        )

    def _inputs(self, i: int) -> _Inputs:
        return self.sets[i % len(self.sets)]

    def fwd(self, i: int) -> torch.Tensor:
        s = self._inputs(i)
        return self.function(s.x, s.branches, s.gates, s.mask, activation="relu")

    def fwd_bwd(self, i: int) -> None:
        s = self._inputs(i)
        torch.autograd.grad(self.fwd(i), s.differentiable, s.grad_out)

    def keep_graph(self, i: int) -> None:
        """Untimed setup of `bwd`: a forward whose graph the next backward consumes (compiled
        backwards donate their buffers, so a graph cannot be retained and replayed), then a
        write over twice the cache, so the backward does not find what the forward just touched."""
        self._pending = self.fwd(i)
        if self._cache_flush is None:
            self._cache_flush = torch.empty(
                _CACHE_MULTIPLE * self.cache_bytes, dtype=torch.uint8, device=self.case.device
            )
        self._cache_flush.zero_()

    def bwd(self, i: int) -> None:
        if self._pending is None:
            raise RuntimeError("bwd: call keep_graph(i) before each bwd(i)")
        y, self._pending = self._pending, None
        s = self._inputs(i)
        torch.autograd.grad(y, s.differentiable, s.grad_out)

    def timed_pass(self, which: str) -> tuple[Step, Step | None]:
        """(step, untimed setup before each step or None) for one of PASSES."""
        if which not in PASSES:
            raise ValueError(f"which: expected one of {list(PASSES)}, got {which!r}")
        return getattr(self, which), (self.keep_graph if which == "bwd" else None)


class CopyWorkload:
    """dst.copy_(src) over rotated pairs: the bandwidth a memory-bound op can hope for."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device, *, cache_bytes: int):
        self.bytes = 2 * numel * dtype.itemsize
        n = rotation_sets(self.bytes, cache_bytes)
        self.pairs = [
            (torch.randn(numel, dtype=dtype, device=device), torch.empty(numel, dtype=dtype, device=device))
            for _ in range(n)
        ]

    def step(self, i: int) -> None:
        src, dst = self.pairs[i % len(self.pairs)]
        dst.copy_(src)


def gbps(num_bytes: int, milliseconds: float) -> float:
    return num_bytes / (milliseconds * 1e-3) / 1e9


def _timing_fields(prefix: str, timing: Timing) -> dict:
    return {f"{prefix}_ms": timing.median_ms, f"{prefix}_p20_ms": timing.p20_ms, f"{prefix}_p80_ms": timing.p80_ms}


def measure_case(case: OpCase, backend: str, *, cache_bytes: int, warmup: int, repeats: int) -> dict:
    """One result row: the three passes' timings and the GB/s of the bytes each must move."""
    workload = OpWorkload(case, backend, cache_bytes=cache_bytes)
    row = {
        "backend": backend,
        "K": case.K,
        "numel": case.numel,
        "shape": list(case.shape),
        "dtype": case.dtype_name,
        "rotation_sets": len(workload.sets),
    }
    for which in PASSES:
        step, setup = workload.timed_pass(which)
        timing = measure(step, device=case.device, warmup=warmup, repeats=repeats, setup=setup)
        row.update(_timing_fields(which, timing))
        row[f"{which}_gbps"] = gbps(case.pass_bytes(which), timing.median_ms)
    return row


def _add_comparisons(rows: list[dict], copy_gbps: float) -> None:
    """Speedups over the eager/compiled reference of the same case, and % of copy bandwidth.

    The unprefixed keys (gbps, pct_copy, speedup_vs_*) are the full training pass, forward+backward;
    fwd_-prefixed ones are the forward alone.
    """
    by_backend = {row["backend"]: row for row in rows}
    for row in rows:
        row["copy_gbps"] = copy_gbps
        row["gbps"] = row["fwd_bwd_gbps"]
        for prefix, which in (("", "fwd_bwd"), ("fwd_", "fwd")):
            row[f"{prefix}pct_copy"] = 100 * row[f"{which}_gbps"] / copy_gbps
            for baseline in BASELINES:
                other = by_backend.get(baseline)
                row[f"{prefix}speedup_vs_{baseline}"] = other[f"{which}_ms"] / row[f"{which}_ms"] if other else None


def run_op_benchmarks(
    device: torch.device,
    backends: Sequence[str],
    cases: Sequence[OpCase],
    *,
    cache_bytes: int,
    warmup: int,
    repeats: int,
    progress: bool = True,
) -> tuple[list[dict], dict[str, float]]:
    """Every case on every backend. Returns the rows and the copy bandwidth per 'dtype:numel'."""
    rows, copy_gbps = [], {}
    bar = tqdm(total=len(cases) * len(backends), desc="residual_aggregate", disable=not progress, leave=False)
    for case in cases:
        if case.size_key not in copy_gbps:
            copy = CopyWorkload(case.numel, case.dtype, device, cache_bytes=cache_bytes)
            copy_gbps[case.size_key] = gbps(
                copy.bytes, measure(copy.step, device=device, warmup=warmup, repeats=repeats).median_ms
            )
        case_rows = []
        for backend in backends:
            bar.set_postfix_str(f"{backend} K={case.K} {tuple(case.shape)} {case.dtype_name}")
            case_rows.append(measure_case(case, backend, cache_bytes=cache_bytes, warmup=warmup, repeats=repeats))
            bar.update()
        _add_comparisons(case_rows, copy_gbps[case.size_key])
        rows.extend(case_rows)
    bar.close()
    return rows, copy_gbps
