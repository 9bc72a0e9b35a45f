"""Compute accounting of a network: multiply-accumulates of a forward pass, counted by torch's
own FLOP counter on the ops that actually run, and the parameters the active topology uses."""

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from plasticnet.models.plastic_resnet import PlasticResNet


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's inputs must live: its first floating tensor's device and dtype."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def forward_macs(model: nn.Module, input_shape: Sequence[int] = (3, 32, 32)) -> int:
    """Multiply-accumulates per image of one forward pass at `input_shape` (channels, height,
    width): torch.utils.flop_counter's FLOPs of an eval-mode, no-grad forward of one image of
    the model's device and dtype, halved (the counter counts a multiply-accumulate as 2 FLOPs).

    A PlasticResNet computes only its active paths, so its count follows the topology. Ops the
    counter does not model (normalisation, activations, the fused residual join) count 0: a
    ResNet's MACs are its convolutions' and its classifier's.

    The model is left as it was: every module's train/eval mode is restored, and an eval-mode
    forward without autograd updates no BN running statistics and no path scores. Compiled
    parts run eagerly here: the counter sees every op, and the one-image shape compiles nothing.
    """
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"input_shape: expected positive ints (channels, height, width), got {input_shape!r}")
    device, dtype = _device_and_dtype(model)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for module, training in modes:
            module.training = training
    return counter.get_total_flops() // 2


def active_parameters(model: nn.Module) -> int:
    """Parameters the model's forward uses: for a PlasticResNet those of its stem, trunk, head
    and active paths, gates included (num_parameters(active_only=True)); for any other module
    all of its parameters."""
    if isinstance(model, PlasticResNet):
        return model.num_parameters(active_only=True)
    return sum(p.numel() for p in model.parameters())
