"""Loads the compiled extension plasticnet._C, after checking it was built for this torch.

An extension built against another torch fails to load with undefined symbols; the
build records its versions in _build_info.json so this can say what to do instead.
The package stays importable without the extension: only the reference backend is then
available, and `unavailable_reason` says why.
"""

import json
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))

build_info: dict = {}
loaded = False
unavailable_reason: str | None = None


def _load() -> None:
    global build_info, loaded, unavailable_reason
    build_info, loaded, unavailable_reason = {}, False, None
    path = os.path.join(_HERE, "_build_info.json")
    if not os.path.exists(path):
        unavailable_reason = "plasticnet._C is not built (run `make build`, or `pip install --no-build-isolation -e .`)"
        return
    with open(path) as f:
        build_info = json.load(f)
    if build_info.get("torch") != torch.__version__:
        unavailable_reason = (
            f"plasticnet._C was built against torch {build_info.get('torch')} but torch "
            f"{torch.__version__} is imported; rebuild it with `make build`"
        )
        return
    try:
        from plasticnet import _C  # noqa: F401  (loading runs the op registrations)
    except ImportError as e:
        unavailable_reason = f"plasticnet._C failed to load: {e}"
        return
    loaded = True


def with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into the loaded extension."""
    return loaded and torch._C._dispatch_has_kernel_for_dispatch_key("plasticnet::residual_aggregate", "CUDA")


_load()
