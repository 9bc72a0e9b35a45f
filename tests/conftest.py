"""Test-wide set-up. Triton kernels run on CPU tensors only under TRITON_INTERPRET=1, which
must be set before any kernel is decorated, i.e. before plasticnet is imported."""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import plasticnet  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Each test draws fresh random inputs, but reproducibly from its own name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
