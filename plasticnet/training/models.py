"""The networks `plasticnet train` builds: static ResNet baselines and plastic ResNets."""

from torch import nn

from plasticnet.models import ARCHITECTURES, StaticResNet

PLASTIC_MODELS = tuple(f"plastic-{name}" for name in ARCHITECTURES)
MODELS = PLASTIC_MODELS + tuple(ARCHITECTURES)


def build_model(config: dict, num_classes: int) -> nn.Module:
    """The network named by config["model"]: a static ResNet or a PlasticResNet."""
    name = config["model"]
    if name in ARCHITECTURES:
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
