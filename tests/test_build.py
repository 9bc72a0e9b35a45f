"""The build: extension loaded, CUDA kernels compiled where a toolkit exists, versions checked,
and `plasticnet info` reporting it."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from plasticnet import _extension
from plasticnet.ops import available_backends


def test_extension_loaded_with_cpu_kernels():
    assert _extension.loaded, _extension.unavailable_reason
    assert "cpu" in available_backends("cpu")


@pytest.mark.skipif(os.environ.get("PLASTICNET_CPU_ONLY") == "1", reason="CPU-only build requested")
def test_cuda_kernels_compiled_when_a_toolkit_exists():
    # CI has nvcc and a CUDA build of torch but no GPU: the CUDA sources must still be compiled in.
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit or CPU-only torch")
    assert _extension.build_info["with_cuda"] is True
    assert _extension.with_cuda(), "the CUDA kernels are not registered for the CUDA dispatch key"


def test_extension_built_for_another_torch_is_refused_with_a_clear_reason(monkeypatch):
    for name in ("build_info", "loaded", "unavailable_reason"):
        monkeypatch.setattr(_extension, name, getattr(_extension, name))
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    _extension._load()
    assert not _extension.loaded
    assert "built against torch" in _extension.unavailable_reason and "0.0.1" in _extension.unavailable_reason


def test_info_command_reports_versions_and_backends():
    out = subprocess.run(
        [sys.executable, "-m", "plasticnet", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert torch.__version__ in out
    assert "backends on cpu" in out and "cpu" in out.split("backends on cpu")[1]
    assert ("CUDA kernels compiled in" in out) == _extension.with_cuda()
