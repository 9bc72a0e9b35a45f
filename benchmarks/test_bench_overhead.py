"""The host overhead of one residual_aggregate call on tiny tensors, fused and eager (the cases of
`plasticnet bench --case overhead`); the ratios against the targets are that command's to report."""

import pytest
import torch

from plasticnet.bench.overhead import OVERHEAD_KS, OVERHEAD_PASSES, OVERHEAD_SHAPE, OverheadWorkload

# Calls per timed round: a single tiny call is too short for pytest-benchmark's clock.
CALLS = 100


# `overhead_backend` is every fused backend of the device's preset, and eager (conftest.py).
@pytest.mark.parametrize("which", OVERHEAD_PASSES)
@pytest.mark.parametrize("K", OVERHEAD_KS)
def test_overhead(run_benchmark, benchmark, device, overhead_backend, K, which):
    workload = OverheadWorkload(K, overhead_backend, device)
    step = workload.step(which)

    def calls(i):
        for j in range(CALLS):
            step(j)

    benchmark.group = f"overhead {which} K={K} {'x'.join(map(str, OVERHEAD_SHAPE))}"
    median_s = run_benchmark(calls)
    benchmark.extra_info.update(backend=overhead_backend, K=K, calls=CALLS, us_per_call=median_s / CALLS * 1e6)
    assert torch.isfinite(workload.no_grad_fwd()).all()
