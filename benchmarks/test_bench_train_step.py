"""One SGD training step of the plastic ResNet-18 against the static one at equal budget,
eager and compiled (the cases of `plasticnet bench`)."""

import pytest

from plasticnet.bench.train_step import MODEL_KINDS, TrainStepCase, TrainStepWorkload


# `mode` comes from the preset's training-step modes (conftest.py).
@pytest.mark.parametrize("model", MODEL_KINDS)
def test_train_step(run_benchmark, benchmark, device, settings, model, mode):
    case = TrainStepCase(model, mode, settings.train_batch, settings.train_width, device)
    workload = TrainStepWorkload(case)
    benchmark.group = f"train step {mode} resnet18 width {case.base_width} batch {case.batch}"
    median_s = run_benchmark(workload.step, repeats=settings.train_repeats)
    benchmark.extra_info.update(
        model=model, mode=mode, base_width=case.base_width, batch=case.batch, images_per_s=case.batch / median_s
    )
