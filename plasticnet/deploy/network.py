"""The network that leaves plasticnet: a run's model made static and, on request, plain PyTorch;
and that network rebuilt from a state_dict export."""

import copy

import torch
from torch import nn

from plasticnet.models import PlasticResNet
from plasticnet.models.static_network import JOINS
from plasticnet.nn import unfuse
from plasticnet.training.builders import build_model
from plasticnet.training.config import TrainConfig


def deployable(model: nn.Module, *, fold_gates: bool = True, join: str = "fused") -> nn.Module:
    """A copy of `model` to export, in eval mode: a PlasticResNet's compact static module
    (to_static), or a static ResNet as it is; join="reference" makes either plain PyTorch."""
    if join not in JOINS:
        raise ValueError(f"join: expected one of {list(JOINS)}, got {join!r}")
    if isinstance(model, PlasticResNet):
        return model.to_static(fold_gates=fold_gates, join=join)
    model = copy.deepcopy(model)
    return (unfuse(model) if join == "reference" else model).eval()


def join_scales(network: nn.Module) -> list[float]:
    """The scale left at each active path's join (1 where the gate was folded into the body)."""
    return [s for node in getattr(network, "nodes", ()) for s in node.gates.tolist()]


def rebuild(metadata: dict, state_dict: dict) -> nn.Module:
    """The network a state_dict export holds: the run's model built again, given the exported
    topology, and made static exactly as the export was (the scales decide which gates fold)."""
    model = build_model(TrainConfig.from_json(metadata["config"]).replace(device="cpu"), metadata["num_classes"])
    if isinstance(model, PlasticResNet):
        paths = [tuple(p) for p in metadata["active_paths"]]
        model.set_active(paths, keep_budget=False)
        with torch.no_grad():
            for path, scale in zip(paths, metadata["scales"]):
                model.path(*path).gate.fill_(scale)
    network = deployable(model, fold_gates=metadata["fold_gates"], join=metadata["join"])
    network.load_state_dict(state_dict)
    return network
