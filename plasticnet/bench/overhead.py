"""The host overhead of one residual_aggregate call: the fused op against the eager reference on
tensors so small that the kernels' own work is negligible, so what is timed is the Python,
dispatch and autograd work around them (`plasticnet bench --case overhead`).

Each sample is the mean wall time of `calls` back-to-back calls (on CUDA, up to a synchronisation
after the last one), so it is what a network of such joins pays per join. Fused and eager samples
alternate, so a machine whose load drifts skews both alike and their ratio stays fair.
"""

import time
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from plasticnet.bench.ops import FUSED_BACKENDS, aggregate_function
from plasticnet.bench.timing import Timing

# A ResNet join at CIFAR's last stage, at a batch of 2: 2 KiB per fp32 tensor.
OVERHEAD_SHAPE = (2, 64, 4, 4)
OVERHEAD_KS = (1, 2, 4)
OVERHEAD_PASSES = ("no_grad_fwd", "fwd_bwd")
# Targets (fused time / eager time; README, "Host overhead"), reported and never asserted: a fused join must not
# cost more than eager PyTorch's handful of small ops even where no memory traffic is saved.
MAX_RATIO = {"no_grad_fwd": 1.0, "fwd_bwd": 0.5}
OVERHEAD_TARGET = (
    f"fused / eager per call at {'x'.join(map(str, OVERHEAD_SHAPE))} float32: forward under no_grad "
    f"<= {MAX_RATIO['no_grad_fwd']}x, forward+backward <= {MAX_RATIO['fwd_bwd']}x"
)


class OverheadWorkload:
    """K tiny branches on one backend ('eager' or a fused one), with its two timed passes."""

    def __init__(self, K: int, backend: str, device: torch.device):
        if backend not in (*FUSED_BACKENDS, "eager"):
            raise ValueError(f"backend: expected 'eager' or one of {list(FUSED_BACKENDS)}, got {backend!r}")
        self.function = aggregate_function(backend)

        def tensor():
            return torch.randn(OVERHEAD_SHAPE, device=device, requires_grad=True)

        self.x, self.branches = tensor(), [tensor() for _ in range(K)]
        # The gates take a gradient as in training (their contributions are the plasticity signal); the mask does not.
        self.gates = (torch.rand(K, device=device) + 0.5).requires_grad_()
        self.mask = torch.ones(K, device=device)
        self.grad_out = torch.randn(OVERHEAD_SHAPE, device=device)
        self.differentiable = [self.x, *self.branches, self.gates]

    def no_grad_fwd(self, i: int = 0) -> torch.Tensor:
        with torch.no_grad():
            return self.function(self.x, self.branches, self.gates, self.mask, activation="relu")

    def fwd_bwd(self, i: int = 0) -> None:
        y = self.function(self.x, self.branches, self.gates, self.mask, activation="relu")
        torch.autograd.grad(y, self.differentiable, self.grad_out)

    def engine_floor(self, i: int = 0) -> None:
        """What torch.autograd.grad costs around a graph of a single native op (torch.relu of x): a
        part of every forward+backward sample, fused or eager, that no op can save."""
        torch.autograd.grad(torch.relu(self.x), self.x, self.grad_out)

    def native_join(self, i: int = 0) -> None:
        """A K = 1 join done by one op PyTorch implements itself (generated C++ autograd node, native
        Python binding): x + gates * branches[0] by torch.addcmul, with the same three leaves taking
        gradients, and no relu or mask. No fused op can hope to cost less than PyTorch's own; there
        is no single native op with more leaves, so it exists only for K = 1."""
        if len(self.branches) != 1:
            raise ValueError(f"native_join: a join of one branch, got {len(self.branches)}")
        y = torch.addcmul(self.x, self.branches[0], self.gates)
        torch.autograd.grad(y, self.differentiable, self.grad_out)

    def step(self, which: str) -> Callable[[int], object]:
        if which not in OVERHEAD_PASSES:
            raise ValueError(f"which: expected one of {list(OVERHEAD_PASSES)}, got {which!r}")
        return getattr(self, which)


def _sample_us(step: Callable[[int], object], calls: int, device: torch.device) -> float:
    """Mean microseconds per call over `calls` calls, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(calls):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls * 1e6


def time_interleaved(
    steps: dict[str, Callable[[int], object]], device: torch.device, *, calls: int, warmup: int, samples: int
) -> dict[str, Timing]:
    """Timing in microseconds per call for each named step, their samples taken in turn."""
    if calls < 1 or samples < 1 or warmup < 0:
        raise ValueError(f"calls, samples: expected >= 1 and warmup >= 0, got {calls}, {samples}, {warmup}")
    for step in steps.values():
        for i in range(warmup * calls):
            step(i)
    collected = {name: [] for name in steps}
    for _ in range(samples):
        for name, step in steps.items():
            collected[name].append(_sample_us(step, calls, device))
    return {name: Timing.from_samples(values) for name, values in collected.items()}


def overhead_target(row: dict) -> str:
    return "PASS" if all(row[f"{which}_ratio"] <= MAX_RATIO[which] for which in OVERHEAD_PASSES) else "MISS"


def run_overhead_benchmarks(
    device: torch.device,
    backends: Sequence[str],
    ks: Sequence[int] = OVERHEAD_KS,
    *,
    calls: int,
    warmup: int,
    samples: int,
    progress: bool = True,
) -> list[dict]:
    """One row per (fused backend, K): both passes' per-call times, fused and eager, and their ratios."""
    fused = [b for b in backends if b in FUSED_BACKENDS]
    if not fused:
        raise ValueError(f"backends: the overhead case needs a fused backend ({list(FUSED_BACKENDS)}), got {backends}")
    rows = []
    bar = tqdm(total=len(fused) * len(ks), desc="overhead", disable=not progress, leave=False)
    for K in ks:
        eager = OverheadWorkload(K, "eager", device)
        for backend in fused:
            bar.set_postfix_str(f"{backend} K={K}")
            workload = OverheadWorkload(K, backend, device)
            row = {"backend": backend, "K": K, "shape": list(OVERHEAD_SHAPE), "dtype": "float32", "calls": calls}
            for which in OVERHEAD_PASSES:
                steps = {"fused": workload.step(which), "eager": eager.step(which)}
                if which == "fwd_bwd":
                    steps["floor"] = eager.engine_floor
                    if K == 1:
                        steps["native"] = eager.native_join
                timings = time_interleaved(
                    steps,
                    device,
                    calls=calls,
                    warmup=warmup,
                    samples=samples,
                )
                for name, timing in timings.items():
                    row[f"{which}_{name}_us"] = timing.median_ms  # the timer's unit here is the microsecond
                    row[f"{which}_{name}_p20_us"] = timing.p20_ms
                    row[f"{which}_{name}_p80_us"] = timing.p80_ms
                row[f"{which}_ratio"] = row[f"{which}_fused_us"] / row[f"{which}_eager_us"]
            # Where the floor alone exceeds MAX_RATIO of eager, no op can meet the target: said beside the ratio.
            # Likewise the native join (K = 1): where it misses MAX_RATIO, PyTorch's own fused op would too.
            for bound in ("floor", "native"):
                if f"fwd_bwd_{bound}_us" in row:
                    row[f"fwd_bwd_{bound}_ratio"] = row[f"fwd_bwd_{bound}_us"] / row["fwd_bwd_eager_us"]
            row["target"] = overhead_target(row)
            rows.append(row)
            bar.update()
    bar.close()
    return rows
