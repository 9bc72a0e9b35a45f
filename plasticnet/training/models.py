"""The networks `plasticnet train` builds: static ResNet baselines and plastic ResNets."""

from torch import nn
from torchvision.models.resnet import ResNet

from plasticnet.models.compilation import compile_each
from plasticnet.nn.blocks import FusedBasicBlock, FusedBottleneck

# name -> (block, blocks per stage), torchvision's ResNet layouts
STATIC_LAYOUTS = {
    "resnet18": (FusedBasicBlock, [2, 2, 2, 2]),
    "resnet34": (FusedBasicBlock, [3, 4, 6, 3]),
    "resnet50": (FusedBottleneck, [3, 4, 6, 3]),
}
PLASTIC_MODELS = tuple(f"plastic-{name}" for name in STATIC_LAYOUTS)
MODELS = PLASTIC_MODELS + tuple(STATIC_LAYOUTS)
STEMS = ("cifar", "imagenet")


class StaticResNet(ResNet):
    """torchvision's ResNet with every width scaled by base_width/64 and, for stem="cifar",
    a 3x3 stride-1 stem without max-pool (32x32 inputs would otherwise shrink to 8x8 at once).

    Its blocks are torchvision's with the residual join fused (plasticnet.nn.blocks), so the
    state_dict is torchvision's and `backend` picks the join's kernel as in the plastic model.
    """

    def __init__(
        self, name: str, num_classes: int, *, base_width: int = 64, stem: str = "cifar", backend: str | None = None
    ):
        if name not in STATIC_LAYOUTS:
            raise ValueError(f"name: expected one of {list(STATIC_LAYOUTS)}, got {name!r}")
        if stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {stem!r}")
        if base_width < 1:
            raise ValueError(f"base_width: expected >= 1, got {base_width}")
        self._width_scale = base_width / 64
        block, layers = STATIC_LAYOUTS[name]
        super().__init__(block, layers, num_classes=num_classes)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(base_width)
        self.fc = nn.Linear(self.inplanes, num_classes)
        self.blocks = [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for b in layer]
        for b in self.blocks:
            b.backend = backend

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage: torchvision set inplanes = 64 for its own stem
            self.inplanes = round(64 * self._width_scale)
        return super()._make_layer(block, round(planes * self._width_scale), blocks, stride, dilate)

    def active_paths(self) -> list[tuple[int, int]]:
        """A static ResNet's paths: block j joins node j-1 to node j."""
        return [(j - 1, j) for j in range(1, len(self.blocks) + 1)]

    def compile_parts(self, **options) -> None:
        """Compile the stem, every block and the head separately (see training.loop.compile_model)."""
        compile_each((self.conv1, self.bn1, self.fc, *self.blocks), **options)


def build_model(config: dict, num_classes: int) -> nn.Module:
    """The network named by config["model"]: a static ResNet or a PlasticResNet."""
    name = config["model"]
    if name in STATIC_LAYOUTS:
        return StaticResNet(
            name, num_classes, base_width=config["base_width"], stem=config["stem"], backend=config["backend"]
        )
    if name not in PLASTIC_MODELS:
        raise ValueError(f"model: expected one of {list(MODELS)}, got {name!r}")
    from plasticnet.models import PlasticResNet

    # a budget other than the ResNet's block count cannot start as that ResNet: start random
    init = config["init"] or ("resnet" if config["budget"] is None else "random")
    return PlasticResNet(
        name.removeprefix("plastic-"),
        num_classes,
        init=init,
        budget=config["budget"],
        max_span=config["max_span"],
        base_width=config["base_width"],
        stem=config["stem"],
        seed=config["seed"],
        backend=config["backend"],
        **config["model_options"],
    )


def build_controller(config: dict, model: nn.Module, optimizer, total_steps: int):
    """The plasticity controller of a plastic model (None for a static one)."""
    if config["model"] not in PLASTIC_MODELS:
        return None
    from plasticnet.plasticity import PlasticityController

    return PlasticityController(
        model,
        optimizer,
        drop=config["drop"],
        grow=config["grow"],
        fraction=config["rewire_fraction"],
        interval=config["rewire_interval"],
        total_steps=total_steps,
        end_fraction=config["rewire_end"],
        seed=config["seed"],
        drop_count=config["drop_count"],
    )
