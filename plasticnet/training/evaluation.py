"""Loss and accuracy of a network over held-out batches, the same for the training loop's
per-epoch evaluation and for `plasticnet eval` of a run or an exported file."""

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn


def accumulate(totals: torch.Tensor, loss_sum: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
    """totals += (summed loss, correct predictions, samples), on the device: no host sync."""
    totals[0] += loss_sum
    totals[1] += (scores.argmax(1) == labels).sum()
    totals[2] += labels.shape[0]


@torch.no_grad()
def held_out_totals(
    predict: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    tta: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """(summed loss, correct, samples) in float64 on `device`, where the labels are. The loss is the negative
    log of the predicted probability; with tta the prediction averages the image's softmax with
    its mirror image's."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for inputs, labels in batches:
        with autocast():
            probabilities = predict(inputs).float().softmax(1)
            if tta:
                probabilities = (probabilities + predict(inputs.flip(3)).float().softmax(1)) / 2
        loss = nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), labels, reduction="sum")
        accumulate(totals, loss, probabilities, labels)
    return totals
