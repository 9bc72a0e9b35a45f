"""residual_aggregate forward, backward and forward+backward on every backend, on the
activation shapes of a CIFAR ResNet-18 (the cases of `plasticnet bench`)."""

import pytest
import torch

from plasticnet.bench.ops import PASSES, OpWorkload, gbps


@pytest.mark.parametrize("which", PASSES)
def test_residual_aggregate(run_benchmark, benchmark, op_case, backend, which, cache_bytes):
    workload = OpWorkload(op_case, backend, cache_bytes=cache_bytes)
    step, setup = workload.timed_pass(which)
    benchmark.group = f"{which} K={op_case.K} {tuple(op_case.shape)} {op_case.dtype_name}"
    median_s = run_benchmark(step, setup=setup)
    benchmark.extra_info.update(
        backend=backend,
        K=op_case.K,
        numel=op_case.numel,
        shape=list(op_case.shape),
        dtype=op_case.dtype_name,
        bytes=op_case.pass_bytes(which),
        gbps=gbps(op_case.pass_bytes(which), median_s * 1e3),
        rotation_sets=len(workload.sets),
    )
    assert torch.isfinite(workload.fwd(0)).all()
