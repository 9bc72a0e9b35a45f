"""StaticResNet: torchvision's ResNet with a width scale, a choice of stem, any number of
blocks per stage and the residual join fused (the static baseline of a plastic network)."""

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import ResNet

from plasticnet.models.architectures import ARCHITECTURES, STEMS
from plasticnet.models.compilation import compile_each
from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck
from plasticnet.ops import BACKENDS

FUSED_BLOCKS = {"basic": FusedBasicBlock, "bottleneck": FusedBottleneck}
NUM_STAGES = 4  # torchvision's ResNet has four stages (layer1 .. layer4)


def _check_blocks_per_stage(blocks_per_stage) -> tuple[int, ...]:
    expected = f"{NUM_STAGES} positive ints (blocks in each of the {NUM_STAGES} stages)"
    if isinstance(blocks_per_stage, (str, bytes)) or not isinstance(blocks_per_stage, Sequence):
        raise ValueError(f"blocks_per_stage: expected {expected}, got {blocks_per_stage!r}")
    blocks = tuple(blocks_per_stage)
    valid = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in blocks)
    if len(blocks) != NUM_STAGES or not valid:
        raise ValueError(f"blocks_per_stage: expected {expected}, got {blocks!r}")
    return blocks


class StaticResNet(ResNet):
    """torchvision's ResNet `arch` with every width scaled by base_width/64 and, for
    stem="cifar", a 3x3 stride-1 stem without max-pool (32x32 inputs would otherwise shrink to
    8x8 at once).

    arch gives the block kind (BasicBlock or Bottleneck) and the default blocks per stage;
    `blocks_per_stage` replaces the latter with any four positive counts (see
    blocks_for_budget for a static ResNet of a given block budget). The blocks are torchvision's
    with the residual join fused (plasticnet.nn.blocks), so the state_dict is torchvision's
    and `backend` picks the join's kernel as in the plastic model.

    Attributes: arch, blocks_per_stage, blocks (every block in forward order).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        *,
        blocks_per_stage: Sequence[int] | None = None,
        base_width: int = 64,
        stem: str = "cifar",
        backend: str | None = None,
    ):
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch: expected one of {list(ARCHITECTURES)}, got {arch!r}")
        if stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {stem!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend: expected None or one of {list(BACKENDS)}, got {backend!r}")
        for name, value in (("num_classes", num_classes), ("base_width", base_width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        body, default_blocks = ARCHITECTURES[arch]
        self.blocks_per_stage = _check_blocks_per_stage(
            default_blocks if blocks_per_stage is None else blocks_per_stage
        )
        self._base_width = base_width
        super().__init__(FUSED_BLOCKS[body], list(self.blocks_per_stage), num_classes=num_classes)
        self.arch = arch
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        # the stem replaces torchvision's after its initialisation ran: initialise it as torchvision does
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(base_width)
        self.fc = nn.Linear(self.inplanes, num_classes)
        # a list, not a ModuleList: the blocks are already registered under torchvision's names
        self.blocks = [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for b in layer]
        for b in self.blocks:
            b.backend = backend

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        # torchvision's stage planes are 64 * 2**s; integer arithmetic keeps them base_width * 2**s exactly
        if planes == 64:  # the first stage: torchvision set inplanes = 64 for its own stem
            self.inplanes = self._base_width
        return super()._make_layer(block, planes * self._base_width // 64, blocks, stride, dilate)

    def active_paths(self) -> list[tuple[int, int]]:
        """A static ResNet's paths: block j joins node j-1 to node j."""
        return [(j - 1, j) for j in range(1, len(self.blocks) + 1)]

    def compile_parts(self, **options) -> None:
        """Compile the stem, every block and the head separately, as PlasticResNet.compile_parts
        does, so that a static baseline is compiled the way the plastic model it is compared with is."""
        compile_each((self.conv1, self.bn1, self.fc, *self.blocks), **options)
