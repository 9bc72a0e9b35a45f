"""What a TrainConfig names, built: the network, its optimizer and lr schedule, and for a
plastic network the controller that rewires it."""

import math

import torch
from torch import nn

from plasticnet.models import ARCHITECTURES, PlasticResNet, StaticResNet, blocks_for_budget
from plasticnet.plasticity import PlasticityController
from plasticnet.training.config import ConfigError, TrainConfig


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The network named by config.model: a static ResNet (of config.budget blocks, or
    config.blocks_per_stage) or a PlasticResNet. A user's impossible combination (a budget
    above the candidate paths, say) is a ConfigError naming the options."""
    try:
        if not config.plastic:
            blocks = config.blocks_per_stage
            if blocks is None and config.budget is not None:
                blocks = blocks_for_budget(config.budget)
            return StaticResNet(
                config.arch,
                num_classes,
                blocks_per_stage=blocks,
                base_width=config.base_width,
                stem=config.stem,
                backend=config.backend,
            )
        budget = config.budget if config.budget_per_stage is None else sum(config.budget_per_stage)
        # budgets the ResNet's chain (j-1 -> j) does not meet cannot start as that ResNet: start random
        nodes = tuple(config.model_options.get("nodes_per_stage") or ARCHITECTURES[config.arch][1])
        chain_fits = budget in (None, sum(nodes)) and config.budget_per_stage in (None, nodes)
        default_init = "resnet" if chain_fits else "random"
        return PlasticResNet(
            config.arch,
            num_classes,
            init=config.init or default_init,
            budget=budget,
            budget_per_stage=config.budget_per_stage,
            max_span=config.max_span,
            base_width=config.base_width,
            stem=config.stem,
            seed=config.seed,
            backend=config.backend,
            **config.model_options,
        )
    except ValueError as error:
        raise ConfigError(f"--model {config.model}: {error}") from None


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam over every parameter, inactive paths included (they get no
    gradient, so no update, until they grow); the gates in a group of their own when
    config.gate_weight_decay sets their weight decay apart."""
    parameters = list(model.parameters())
    groups: list[dict] = [{"params": parameters}]
    if config.gate_weight_decay is not None and config.plastic:
        gate_ids = {id(path.gate) for path in model.paths.values()}
        groups = [
            {"params": [p for p in parameters if id(p) not in gate_ids]},
            {"params": [p for p in parameters if id(p) in gate_ids], "weight_decay": config.gate_weight_decay},
        ]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr after `step` optimizer steps: linear warm-up from 1/warmup,
    then cosine or linear decay to 0 at total_steps (one-cycle shapes), or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=config.schedule),
    )


def build_controller(
    config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int
) -> PlasticityController | None:
    """The plasticity controller of a plastic model (None for a static one)."""
    if not config.plastic:
        return None
    return PlasticityController(
        model,
        optimizer,
        drop=config.drop,
        grow=config.grow,
        fraction=config.rewire_fraction,
        interval=config.rewire_interval,
        total_steps=total_steps,
        end_fraction=config.rewire_end,
        seed=config.seed,
        drop_count=config.drop_count,
        protect_rewires=config.protect_rewires,
        regrow=config.regrow,
        grown_gate=config.grown_gate,
    )
