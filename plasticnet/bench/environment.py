"""What a benchmark ran on: device name, versions, threads, load, and the cache size that
input rotation has to exceed."""

import datetime
import glob
import os
import platform

import torch

# When the cache size cannot be read: larger than most server L3s, so rotation errs on the safe side.
_FALLBACK_CACHE_BYTES = 64 * 2**20


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()


def _parse_cache_size(text: str) -> int:
    """sysfs writes sizes like '32768K' or '2M'."""
    text = text.strip()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def last_level_cache_bytes(device: torch.device) -> int:
    """The largest cache in front of `device`'s memory (GPU L2, CPU L3 or L2)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                sizes.append(_parse_cache_size(f.read()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=_FALLBACK_CACHE_BYTES)


def versions() -> dict:
    from plasticnet import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "plasticnet": __version__,
        "cuda": torch.version.cuda,
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load: other processes on the machine skew CPU timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe(device: torch.device) -> dict:
    """The header every benchmark JSON starts with."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "load_before": load_average(),
    }
