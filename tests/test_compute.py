"""Compute accounting: forward MACs by torch's FLOP counter and the parameters a topology uses."""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from plasticnet.models import PlasticResNet, StaticResNet
from plasticnet.models.compute import active_parameters, forward_macs

RESNET18_IMAGENET_MACS = 1.82e9  # torchvision's published 1.81 GFLOPS (multiply-accumulates) of ResNet-18


def test_static_resnet18_macs_are_torchvisions():
    theirs = torchvision.models.resnet18().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        theirs(torch.zeros(1, 3, 224, 224))
    ours = StaticResNet("resnet18", 1000, stem="imagenet", base_width=64)
    macs = forward_macs(ours, (3, 224, 224))
    assert macs == counter.get_total_flops() // 2
    assert macs == pytest.approx(RESNET18_IMAGENET_MACS, rel=0.01)


def test_counter_prints_nothing(capsys):
    forward_macs(StaticResNet("resnet18", base_width=8))
    assert capsys.readouterr().out == ""


def test_plastic_resnet_at_the_resnet_topology_costs_what_the_resnet_does():
    static = StaticResNet("resnet18", base_width=16)
    plastic = PlasticResNet("resnet18", init="resnet", base_width=16)
    assert forward_macs(plastic) == forward_macs(static) > 0
    # the same weights, plus one scalar gate per active path
    assert active_parameters(plastic) == active_parameters(static) + len(plastic.active_paths())
    assert active_parameters(plastic) == plastic.num_parameters(active_only=True, gates=False) + 8
    assert active_parameters(plastic) < plastic.num_parameters()  # the inactive candidates are not counted


def test_plastic_macs_follow_the_topology():
    model = PlasticResNet("resnet18", init="resnet", base_width=16)
    chain = model.active_paths()
    full = forward_macs(model)
    # node 1 is stage 0's (16 channels at 32x32), node 3 the first of stage 1 (stride 2)
    body_01 = forward_macs(model.path(0, 1).body, (16, 32, 32))
    body_13 = forward_macs(model.path(1, 3).body, (16, 32, 32))
    assert body_01 > 0 and body_13 > 0 and body_01 != body_13

    model.set_active([p for p in chain if p != (0, 1)], keep_budget=False)
    assert forward_macs(model) == full - body_01
    model.set_active([p for p in chain if p != (0, 1)] + [(1, 3)], keep_budget=False)
    assert forward_macs(model) == full - body_01 + body_13
    parameters_13 = sum(p.numel() for p in model.path(1, 3).parameters())
    parameters_01 = sum(p.numel() for p in model.path(0, 1).parameters())
    model.set_active(chain, keep_budget=False)
    chain_parameters = active_parameters(model)
    model.set_active([p for p in chain if p != (0, 1)] + [(1, 3)], keep_budget=False)
    assert active_parameters(model) == chain_parameters - parameters_01 + parameters_13


@pytest.mark.parametrize("training", [True, False])
def test_forward_macs_leaves_the_model_as_it_was(training):
    model = PlasticResNet("resnet18", init="resnet", base_width=8)
    model.train(training)
    model.fc.eval()  # a mixed mode must come back as it was, not as model.train(training)
    before = {name: t.clone() for name, t in (*model.state_dict().items(), *model.named_parameters())}
    statistics = {name: s.clone() for name, s in model.path_statistics().items()}
    forward_macs(model)
    assert model.training == training and not model.fc.training
    assert all(m.training == training for m in model.trunk.modules())
    after = {name: t for name, t in (*model.state_dict().items(), *model.named_parameters())}
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)
    for name, values in model.path_statistics().items():
        torch.testing.assert_close(values, statistics[name], rtol=0, atol=0)


def test_forward_macs_uses_the_models_dtype():
    model = StaticResNet("resnet18", base_width=8).double()
    assert forward_macs(model) == forward_macs(StaticResNet("resnet18", base_width=8))


def test_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        forward_macs(StaticResNet("resnet18", base_width=8), (3, 0, 32))


def test_any_module():
    linear = torch.nn.Linear(5, 7)
    assert forward_macs(linear, (5,)) == 35
    assert active_parameters(linear) == 42
