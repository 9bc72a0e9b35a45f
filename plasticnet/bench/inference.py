"""Inference speed of a found network (`plasticnet bench --case inference`): images/s in eval mode,
without autograd, of a plastic ResNet-18 with a random topology of 8 active paths (spans up to 3),
its static export (to_static with the fused join and with the plain-PyTorch one) and the static
ResNet-18 of 8 blocks: equal active paths, side by side in one run, their samples interleaved so
that a drifting machine load skews all alike."""

import torch
from torch import nn
from tqdm import tqdm

from plasticnet.bench.overhead import time_interleaved
from plasticnet.bench.report import format_table
from plasticnet.models import PlasticResNet, StaticResNet
from plasticnet.models.compute import active_parameters, forward_macs
from plasticnet.models.static_network import StaticNetwork

INFERENCE_PRESETS = {
    ("cpu", False): {"batch": 64, "width": 16, "warmup": 2, "samples": 9},
    ("cpu", True): {"batch": 16, "width": 8, "warmup": 1, "samples": 3},
    ("cuda", False): {"batch": 256, "width": 64, "warmup": 5, "samples": 21},
    ("cuda", True): {"batch": 64, "width": 64, "warmup": 2, "samples": 7},
}
INFERENCE_TARGET = "the static export's images/s >= the plastic model's (eval mode, no autograd)"
PLASTIC = "plastic"


def inference_models(width: int, device: torch.device) -> dict[str, nn.Module]:
    plastic = PlasticResNet("resnet18", base_width=width, init="random", max_span=3, seed=0)
    models = {
        PLASTIC: plastic,
        "export, fused join": plastic.to_static(),
        "export, reference join": plastic.to_static(join="reference"),
        "static resnet18": StaticResNet("resnet18", base_width=width),
    }
    return {name: model.to(device, memory_format=_layout(device)).eval() for name, model in models.items()}


def _layout(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _active_paths(model: nn.Module) -> int:
    if isinstance(model, PlasticResNet):
        return len(model.active_paths())
    if isinstance(model, StaticNetwork):
        return len(model.active_paths)
    return len(model.blocks)


def run_inference_benchmarks(device: torch.device, settings: dict, *, progress: bool = True) -> list[dict]:
    """One row per model: its active paths, parameters, MACs per image and images/s, and the
    images/s relative to the plastic model's."""
    models = inference_models(settings["width"], device)
    images = torch.randn(settings["batch"], 3, 32, 32, device=device).contiguous(memory_format=_layout(device))

    def forward(model: nn.Module):
        def step(i: int) -> None:
            with torch.no_grad():
                model(images)

        return step

    with tqdm(total=1, desc="inference", disable=not progress, leave=False):
        timings = time_interleaved(
            {name: forward(m) for name, m in models.items()},
            device,
            calls=1,
            warmup=settings["warmup"],
            samples=settings["samples"],
        )
    rows = []
    for name, model in models.items():
        timing = timings[name]  # microseconds per batch
        rows.append(
            {
                "model": name,
                "active_paths": _active_paths(model),
                "parameters": active_parameters(model),
                "macs": forward_macs(model),
                "batch_ms": timing.median_ms / 1e3,
                "batch_p20_ms": timing.p20_ms / 1e3,
                "batch_p80_ms": timing.p80_ms / 1e3,
                "images_per_s": settings["batch"] / (timing.median_ms * 1e-6),
            }
        )
    plastic_speed = rows[0]["images_per_s"]
    for row in rows:
        row["vs_plastic"] = row["images_per_s"] / plastic_speed
        is_export = row["model"].startswith("export")
        row["target"] = ("PASS" if row["vs_plastic"] >= 1.0 else "MISS") if is_export else None
    return rows


def inference_table(rows: list[dict], *, markdown: bool = False) -> str:
    headers = ["model", "paths", "parameters", "MACs/image", "ms/batch (p20-p80)", "images/s", "vs plastic", "target"]
    cells = [
        [
            r["model"],
            str(r["active_paths"]),
            f"{r['parameters']:,}",
            f"{r['macs']:,}",
            f"{r['batch_ms']:.2f} ({r['batch_p20_ms']:.2f}-{r['batch_p80_ms']:.2f})",
            f"{r['images_per_s']:.0f}",
            f"{r['vs_plastic']:.2f}x",
            r["target"] or "",
        ]
        for r in rows
    ]
    return format_table(headers, cells, markdown=markdown)
