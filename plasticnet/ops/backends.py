"""Which residual_aggregate backends exist on a device, and which one `backend=None` picks."""

import importlib.util
import os

import torch

from plasticnet import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Fastest first. On CUDA the order must follow the GPU benchmarks (benchmarks/results/);
# none has been measured on a GPU yet, so the compiled CUDA kernel leads by default.
_PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors when TRITON_INTERPRET=1 was set before import."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


# Availability is a fact of the process (the extension and triton load once, at import): computed
# once per (backend, device type), so that choosing a backend costs a call nothing.
_REASONS: dict[tuple[str, str], str | None] = {}
_DEFAULTS: dict[str, str] = {}


@torch.compiler.assume_constant_result  # a fact of the process, not of the traced values
def _unavailable(backend: str, device_type: str) -> str | None:
    """None when `backend` can run on `device_type`, else the reason it cannot."""
    key = (backend, device_type)
    if key not in _REASONS:
        _REASONS[key] = _find_unavailable(backend, device_type)
    return _REASONS[key]


def _find_unavailable(backend: str, device_type: str) -> str | None:
    if backend == "reference":
        return None
    if backend == "triton":
        if not _triton_importable():
            return "triton is not installed"
        if not (device_type == "cuda" or (device_type == "cpu" and triton_interpreted())):
            return (
                "the triton backend takes CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                f"got {device_type} tensors"
            )
        return None
    if not _extension.loaded:
        return _extension.unavailable_reason
    if backend == "cpu":
        if device_type != "cpu":
            return f"the cpu backend takes CPU tensors, got {device_type} tensors"
        if not torch._C._dispatch_has_kernel_for_dispatch_key("plasticnet::residual_aggregate", "CPU"):
            return "plasticnet._C was built without its CPU kernels"
        return None
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend takes CUDA tensors, got {device_type} tensors"
        return None if _extension.with_cuda() else "plasticnet._C was built without its CUDA kernels"
    raise AssertionError(backend)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run residual_aggregate on tensors of `device`."""
    device_type = torch.device(device).type
    return [b for b in BACKENDS if _unavailable(b, device_type) is None]


@torch.compiler.assume_constant_result
def _default_backend(device_type: str) -> str:
    if device_type not in _DEFAULTS:
        available = set(available_backends(device_type))
        _DEFAULTS[device_type] = next(b for b in _PREFERENCE.get(device_type, ("reference",)) if b in available)
    return _DEFAULTS[device_type]


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to run on `device`: `backend` itself when it can, the fastest available for None."""
    if backend is None:
        return _default_backend(device.type)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected None or one of {list(BACKENDS)}, got {backend!r}")
    reason = _unavailable(backend, device.type)
    if reason is not None:
        raise ValueError(
            f"backend {backend!r} is unavailable ({reason}); available on {device.type}: {available_backends(device)}"
        )
    return backend
