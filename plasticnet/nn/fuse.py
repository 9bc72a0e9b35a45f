"""fuse(): swap, in place, the residual blocks of a torchvision ResNet for their fused twins."""

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck
from plasticnet.ops import BACKENDS

_FUSED_TWIN = {BasicBlock: FusedBasicBlock, Bottleneck: FusedBottleneck}


def fuse(model: nn.Module, *, backend: str | None = None) -> nn.Module:
    """Make every BasicBlock/Bottleneck of a torchvision ResNet-family model (resnet18..152,
    wide_resnet*, resnext*) a FusedBasicBlock/FusedBottleneck, in place, and return the model.

    The blocks keep their parameters, buffers and hooks (the very same objects, so an optimizer
    built before fuse() keeps working); outputs and gradients are unchanged. Fusing twice is a
    no-op apart from setting `backend` (None: the fastest available) on every fused block.

    Raises TypeError when the model has no BasicBlock/Bottleneck at all (not a ResNet), and
    ValueError, before changing anything, when some block is a subclass fuse() does not know
    (its forward may differ from torchvision's, so swapping it could change the function).
    """
    # Only the name is checked here: whether the backend runs depends on where the model lives
    # when it is called (fuse(model, backend="triton").cuda() is fine).
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected None or one of {list(BACKENDS)}, got {backend!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]
    if not blocks:
        raise TypeError(
            f"model: expected a torchvision ResNet-family model (with torchvision.models.resnet "
            f"BasicBlock or Bottleneck blocks), got a {type(model).__name__} with none"
        )
    unknown = [
        f"{name or '<model>'} ({type(m).__qualname__})"
        for name, m in blocks
        if type(m) not in _FUSED_TWIN and not isinstance(m, (FusedBasicBlock, FusedBottleneck))
    ]
    if unknown:
        raise ValueError(
            f"model: cannot fuse these blocks, which are neither torchvision's BasicBlock/Bottleneck "
            f"nor fused blocks: {', '.join(unknown)}"
        )
    for _, block in blocks:
        twin = _FUSED_TWIN.get(type(block))
        if twin is not None:
            # Retyping in place, rather than building a new block, keeps every parameter, buffer
            # and hook object and needs no constructor arguments (torchvision does not store them).
            device = next(block.parameters()).device
            block.__class__ = twin
            block._init_join(device=device)
        block.backend = backend
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """The inverse of fuse(): make every FusedBasicBlock/FusedBottleneck torchvision's own block
    again, in place (the same parameter and buffer objects), and return the model. Its forward is
    then plain PyTorch, for exports that must run where plasticnet is not installed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    plain = {twin: block for block, twin in _FUSED_TWIN.items()}
    for block in model.modules():
        if type(block) in plain:
            block.__class__ = plain[type(block)]
            for name in ("join_gates", "join_mask"):  # the fused join's constants
                delattr(block, name)
            del block.backend
    return model
