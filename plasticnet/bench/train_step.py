"""End-to-end training step (images/s): a plastic ResNet-18 against the static one at equal
budget (init="resnet": exactly the ResNet's paths active), in eager mode and compiled."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from plasticnet.bench.timing import measure
from plasticnet.models import PlasticResNet, StaticResNet
from plasticnet.ops import resolve_backend

# the two sides of the comparison: the static ResNet-18 and the plastic one at its topology
MODEL_KINDS = ("static", "plastic")
MODES = ("eager", "compile")
ARCH = "resnet18"
NUM_CLASSES = 10
# A handful of batches is enough: the step streams the weights and activations, not the images.
_INPUT_BATCHES = 4


def build_resnet18(kind: str, *, base_width: int, backend: str | None) -> nn.Module:
    """The ResNet-18 of one side of the comparison, with the CIFAR stem. The static one is
    torchvision's (plasticnet.models.StaticResNet); both join residuals with the same
    residual_aggregate backend, so the comparison isolates what plasticity adds (gates, score
    taps, topology bookkeeping)."""
    if kind == "plastic":
        return PlasticResNet(ARCH, num_classes=NUM_CLASSES, init="resnet", base_width=base_width, backend=backend)
    if kind == "static":
        return StaticResNet(ARCH, NUM_CLASSES, base_width=base_width, stem="cifar", backend=backend)
    raise ValueError(f"model: expected one of {list(MODEL_KINDS)}, got {kind!r}")


@dataclass(frozen=True)
class TrainStepCase:
    model: str
    mode: str
    batch: int
    base_width: int
    device: torch.device
    backend: str | None = None


class TrainStepWorkload:
    """SGD steps (forward, cross-entropy, backward, update) of one model on CIFAR-shaped batches."""

    def __init__(self, case: TrainStepCase):
        if case.mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {case.mode!r}")
        self.case = case
        self.model = build_resnet18(case.model, base_width=case.base_width, backend=case.backend)
        self.model.to(case.device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        if case.mode == "compile":
            # The whole model as one graph (dynamo breaks it where it must); a fresh dynamo
            # state per model keeps recompilation limits from leaking between cases.
            torch._dynamo.reset()
            self.forward = torch.compile(self.model)
        else:
            self.forward = self.model
        self.batches = [
            (
                torch.randn(case.batch, 3, 32, 32, device=case.device),
                torch.randint(0, NUM_CLASSES, (case.batch,), device=case.device),
            )
            for _ in range(_INPUT_BATCHES)
        ]
        self.step(0)  # compiles (mode "compile") before anything is timed

    def step(self, i: int) -> None:
        images, labels = self.batches[i % len(self.batches)]
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(images), labels).backward()
        self.optimizer.step()


def measure_train_step(case: TrainStepCase, *, warmup: int, repeats: int) -> dict:
    workload = TrainStepWorkload(case)
    timing = measure(workload.step, device=case.device, warmup=warmup, repeats=repeats)
    return {
        "model": case.model,
        "mode": case.mode,
        "compile_scope": "whole model" if case.mode == "compile" else None,
        "arch": ARCH,
        "base_width": case.base_width,
        "batch": case.batch,
        "backend": resolve_backend(case.backend, case.device),
        "active_paths": len(workload.model.active_paths()),
        "step_ms": timing.median_ms,
        "step_p20_ms": timing.p20_ms,
        "step_p80_ms": timing.p80_ms,
        "images_per_s": case.batch / (timing.median_ms * 1e-3),
    }


def run_train_step_benchmarks(
    device: torch.device,
    *,
    batch: int,
    base_width: int,
    modes: Sequence[str],
    warmup: int,
    repeats: int,
    backend: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Static and plastic in every mode; each plastic row carries its throughput relative to static."""
    rows = []
    cases = [TrainStepCase(model, mode, batch, base_width, device, backend) for mode in modes for model in MODEL_KINDS]
    for case in tqdm(cases, desc="train step", disable=not progress, leave=False):
        rows.append(measure_train_step(case, warmup=warmup, repeats=repeats))
    static = {row["mode"]: row for row in rows if row["model"] == "static"}
    for row in rows:
        row["vs_static"] = row["images_per_s"] / static[row["mode"]]["images_per_s"]
    return rows
