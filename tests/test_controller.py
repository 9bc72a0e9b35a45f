"""PlasticityController: its schedule, its arguments, and its drop and grow criteria, on the
fake and the real plastic network of controller_fakes."""

import math

import controller_fakes
import pytest
import torch
from controller_fakes import TinyPlasticNet, clone, controller_for, loss_on, paths_of, set_gate, set_taylor, tiny_batch
from torch import nn

from plasticnet.plasticity.controller import PlasticityController
from plasticnet.plasticity.criteria import strongest, weakest
from plasticnet.plasticity.schedules import RewireSchedule, cosine_drop_fraction

net = controller_fakes.net


# ---- schedule ----


def test_cosine_fraction_follows_rigl_schedule():
    fraction, end_step = 0.3, 750.0
    assert cosine_drop_fraction(0, fraction=fraction, end_step=end_step) == pytest.approx(fraction)
    assert cosine_drop_fraction(375, fraction=fraction, end_step=end_step) == pytest.approx(fraction / 2)
    assert cosine_drop_fraction(750, fraction=fraction, end_step=end_step) == 0.0
    values = [cosine_drop_fraction(t, fraction=fraction, end_step=end_step) for t in range(0, 751, 50)]
    assert all(a > b for a, b in zip(values, values[1:])), "the fraction decays monotonically to the end step"


def test_schedule_rewire_steps_and_counts():
    schedule = RewireSchedule(fraction=0.3, interval=100, total_steps=1000, end_fraction=0.75)
    assert [t for t in range(1001) if schedule.is_rewire_step(t)] == [100, 200, 300, 400, 500, 600, 700]
    budget = 16
    for t in (100, 400, 700):
        expected = max(1, math.floor(schedule.fraction_at(t) * budget + 0.5))
        assert schedule.drop_count(t, budget) == expected
    # close to the end fraction_t * budget rounds to 0, but a rewire still drops one path
    assert schedule.fraction_at(700) * budget < 0.5 and schedule.drop_count(700, budget) == 1
    assert schedule.drop_count(750, budget) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"interval": 0}, "interval"),
        ({"interval": 2.5}, "interval"),
        ({"total_steps": -1}, "total_steps"),
        ({"end_fraction": 0}, "end_fraction"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, message):
    arguments = {"fraction": 0.3, "interval": 100, "total_steps": 1000, "end_fraction": 0.75, **kwargs}
    with pytest.raises(ValueError, match=message):
        RewireSchedule(**arguments)


# ---- arguments ----


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"drop": "smallest"}, ValueError, "drop: expected one of"),
        ({"grow": "gradient"}, ValueError, "grow: expected one of"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"threshold": 0.3}, ValueError, "only drop='threshold'"),
        ({"drop": "threshold", "threshold": -1.0}, ValueError, "positive number"),
        ({"drop_count": 0}, ValueError, "drop_count"),
        ({"drop_count": "all"}, ValueError, "drop_count"),
        ({"drop": "threshold", "drop_count": 1}, ValueError, "takes no drop_count"),
    ],
)
def test_controller_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        controller_for(TinyPlasticNet(), **kwargs)


def test_controller_rejects_non_plastic_model_and_non_optimizer():
    plain = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="model: expected a plastic network"):
        PlasticityController(plain, torch.optim.SGD(plain.parameters(), lr=0.1), total_steps=10)
    with pytest.raises(TypeError, match="optimizer: expected a torch.optim.Optimizer"):
        PlasticityController(TinyPlasticNet(), object(), total_steps=10)


def test_controller_rejects_an_optimizer_without_the_inactive_paths(net):
    model, _ = net
    # a common idiom, wrong here: a grown path's parameters would never train
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match="optimizer: expected to hold the parameters of every candidate path"):
        controller_for(model, optimizer)


# ---- drop criteria ----


def set_gradient_sum(model, path, value):
    params = list(model.path(*path).body.parameters())
    for param in params:
        param.grad = torch.zeros_like(param)
    params[0].grad.view(-1)[0] = -value  # the sign must not matter: the criterion sums |grad|


@pytest.mark.parametrize(
    "drop, construct", [("gate", set_gate), ("gradient", set_gradient_sum), ("taylor", set_taylor)]
)
@pytest.mark.parametrize("drop_count", ["fraction", 1])
def test_drop_criterion_drops_the_weakest_paths(drop, construct, drop_count):
    model = TinyPlasticNet()
    active = model.active_paths()
    values = (torch.rand(len(active)) + 0.1).tolist()
    for path, value in zip(active, values):
        construct(model, path, value)
    controller = controller_for(model, drop=drop, drop_count=drop_count)
    event = controller.step()
    count = controller.schedule.drop_count(1, model.budget) if drop_count == "fraction" else drop_count
    expected = sorted(zip(active, values), key=lambda item: item[1])[:count]
    assert paths_of(event.dropped) == paths_of(expected)
    assert [score for _, score in event.dropped] == pytest.approx([value for _, value in expected])
    assert len(event.grown) == count and len(model.active_paths()) == model.budget


def test_ties_go_to_the_earlier_path():
    model = TinyPlasticNet()  # every gate 1: a tie among all active paths
    event = controller_for(model, drop="gate", drop_count=2).step()
    assert paths_of(event.dropped) == [(0, 1), (1, 2)]
    scored = [((2, 3), 1.0), ((0, 1), 1.0), ((1, 2), 0.5), ((0, 2), 0.5)]
    assert paths_of(weakest(scored, 3)) == [(0, 2), (1, 2), (0, 1)]
    assert paths_of(strongest(scored, 3)) == [(0, 1), (2, 3), (0, 2)]


def test_gradient_drop_without_gradients_names_the_call_order():
    model = TinyPlasticNet()
    with pytest.raises(RuntimeError, match="before optimizer.zero_grad"):
        controller_for(model, drop="gradient").step()


def test_taylor_drop_before_any_backward_is_an_error_that_changes_nothing(net):
    # A fresh network's scores are all zero: no evidence to drop the "weakest" on.
    model, make_batch = net
    before = model.active_paths()
    controller = controller_for(model, drop="taylor")
    with pytest.raises(RuntimeError, match=r"drop='taylor': no backward has measured paths \[\(0, 1\)"):
        controller.step()
    assert model.active_paths() == before and controller.history == []
    loss_on(model, make_batch(torch.Generator().manual_seed(0))).backward()
    assert controller.step() is not None  # once measured, the next rewire goes ahead


@pytest.mark.parametrize("threshold", [None, 0.8])
def test_threshold_drops_every_gate_below_it_and_regrows_to_budget(threshold):
    model = TinyPlasticNet()
    active = model.active_paths()
    gates = [0.1, 0.9, -0.3, 0.6, 0.75, 1.2]
    for path, gate in zip(active, gates):
        set_gate(model, path, gate)
    limit = 0.5 if threshold is None else threshold
    event = controller_for(model, drop="threshold", threshold=threshold).step()
    assert sorted(paths_of(event.dropped)) == [p for p, g in zip(active, gates) if abs(g) < limit]
    assert len(event.grown) == len(event.dropped)
    assert len(model.active_paths()) == model.budget
    assert set(paths_of(event.grown)).isdisjoint(active)


def test_threshold_with_no_gate_below_it_changes_nothing():
    model = TinyPlasticNet()
    before = model.active_paths()
    event = controller_for(model, drop="threshold").step()
    assert event.dropped == [] and event.grown == [] and model.active_paths() == before


# ---- grow criteria ----


def expected_contributions(model, batch, probed):
    """c of each probed path, computed independently: activate it with gate 0 in a twin model
    and read d loss / d gate (= c, the op's contract)."""
    twin = clone(model)
    for path in probed:
        set_gate(twin, path, 0.0)
    twin.set_active(model.active_paths() + probed, keep_budget=False)
    loss_on(twin, batch).backward()
    return {path: twin.path(*path).gate.grad.item() for path in probed}


def test_probe_grows_the_largest_contributions(net):
    model, make_batch = net
    model = model.double()
    batch = tuple(t.double() if t.is_floating_point() else t for t in make_batch(torch.Generator().manual_seed(1)))
    inactive = sorted(set(model.candidate_paths()) - set(model.active_paths()))
    contributions = expected_contributions(model, batch, inactive)
    controller = controller_for(model, grow="probe", drop_count=2)
    event = controller.step(probe=lambda: loss_on(model, batch).backward())
    expected = sorted(inactive, key=lambda p: -abs(contributions[p]))[:2]
    assert paths_of(event.grown) == expected
    assert [score for _, score in event.grown] == pytest.approx([abs(contributions[p]) for p in expected])
    assert all(param.grad is None for param in model.parameters()), "the probe's gradients are cleared"


def test_probe_is_required_on_rewire_steps_only():
    controller = controller_for(TinyPlasticNet(), grow="probe", interval=2)
    assert controller.step() is None
    with pytest.raises(ValueError, match="probe: grow='probe' needs step"):
        controller.step()


def test_probe_closure_without_backward_is_an_error():
    model = TinyPlasticNet()
    batch = tiny_batch(torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="call backward"):
        controller_for(model, grow="probe").step(probe=lambda: loss_on(model, batch))
