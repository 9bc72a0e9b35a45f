"""pytest-benchmark harness over plasticnet.bench's cases (the same ones `plasticnet bench` times).

Run with `python -m pytest benchmarks/ --benchmark-only`; the normal test run never collects
this directory (pytest.ini: testpaths = tests).
"""

import itertools

import pytest
import torch

from plasticnet.bench.environment import describe, last_level_cache_bytes
from plasticnet.bench.ops import BASELINES
from plasticnet.bench.settings import PRESETS, BenchSettings


def pytest_addoption(parser):
    group = parser.getgroup("plasticnet benchmarks")
    group.addoption(
        "--bench-device",
        choices=("cpu", "cuda"),
        default=None,
        help="device to benchmark (default: cuda when available, else cpu)",
    )
    group.addoption("--bench-quick", action="store_true", help="the small `plasticnet bench --quick` sizes")


def bench_device(config) -> torch.device:
    """The device at collection time, when parametrisation needs it (fixtures do not exist yet)."""
    return torch.device(config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu"))


def bench_settings(config) -> BenchSettings:
    device = bench_device(config)
    return PRESETS[(device.type, config.getoption("--bench-quick"))].resolved(device)


def pytest_generate_tests(metafunc):
    """`op_case` x `backend`, the training step's `mode` and the overhead case's `overhead_backend`: the
    `plasticnet bench` cases of the device and preset."""
    settings = bench_settings(metafunc.config)
    if "op_case" in metafunc.fixturenames:
        cases = settings.op_cases(bench_device(metafunc.config))
        ids = [f"K{c.K}-{'x'.join(map(str, c.shape))}-{c.dtype_name}" for c in cases]
        metafunc.parametrize("op_case", cases, ids=ids)
        metafunc.parametrize("backend", settings.backends)
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", settings.train_modes)
    if "overhead_backend" in metafunc.fixturenames:
        metafunc.parametrize("overhead_backend", [b for b in settings.backends if b not in BASELINES] + ["eager"])


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return bench_device(pytestconfig)


@pytest.fixture(scope="session")
def cache_bytes(device) -> int:
    return last_level_cache_bytes(device)


@pytest.fixture(scope="session")
def settings(pytestconfig) -> BenchSettings:
    return bench_settings(pytestconfig)


@pytest.fixture
def run_benchmark(benchmark, device, settings):
    """Time step(i) with pytest-benchmark, rotating i and running the untimed setup(i) first.

    pytest-benchmark reads the host clock, so on CUDA both setup and step synchronise.
    """

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(step, *, setup=None, repeats=None):
        counter = itertools.count()

        def next_round():
            i = next(counter)
            if setup is not None:
                setup(i)
            sync()
            return (i,), {}

        def timed(i):
            step(i)
            sync()

        benchmark.extra_info.update({k: v for k, v in describe(device).items() if k != "date"})
        benchmark.pedantic(timed, setup=next_round, rounds=repeats or settings.repeats, warmup_rounds=settings.warmup)
        return benchmark.stats.stats.median

    return run
