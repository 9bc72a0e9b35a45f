"""Timing of one workload step: warm-up excluded, percentiles over repeats, CUDA events on GPU.

A step is a callable taking the repeat index, so the workload can rotate its input buffers
(caches must not flatter the kernels) without the timer knowing how. An optional untimed
setup(i) runs before each step(i): a backward-only step needs a fresh graph every time.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds per step: the median and the 20th/80th percentiles over the repeats."""

    median_ms: float
    p20_ms: float
    p80_ms: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "Timing":
        if not samples_ms:
            raise ValueError("samples_ms: expected at least one sample, got none")
        if len(samples_ms) == 1:
            return cls(samples_ms[0], samples_ms[0], samples_ms[0])
        # 10 cut points: the 2nd is p20, the 8th p80 ("inclusive" keeps them inside the samples' range).
        deciles = statistics.quantiles(samples_ms, n=10, method="inclusive")
        return cls(statistics.median(samples_ms), deciles[1], deciles[7])


Step = Callable[[int], object]


def _cpu_samples(step: Step, setup: Step, first: int, repeats: int) -> list[float]:
    samples = []
    for i in range(first, first + repeats):
        setup(i)
        start = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def _cuda_samples(step: Step, setup: Step, first: int, repeats: int) -> list[float]:
    # Events time the GPU work itself; one synchronisation at the end keeps the host from
    # stalling the queue between repeats.
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for i, (start, end) in enumerate(events):
        setup(first + i)
        start.record()
        step(first + i)
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def measure(step: Step, *, device: torch.device, warmup: int, repeats: int, setup: Step | None = None) -> Timing:
    """Run `setup(i); step(i)` for `warmup` untimed then `repeats` timed indices i = 0, 1, ...;
    only `step` is timed."""
    if warmup < 0:
        raise ValueError(f"warmup: expected >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    setup = setup or (lambda i: None)
    for i in range(warmup):
        setup(i)
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return Timing.from_samples(_cuda_samples(step, setup, warmup, repeats))
    return Timing.from_samples(_cpu_samples(step, setup, warmup, repeats))
