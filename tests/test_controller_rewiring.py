"""PlasticityController: what a rewire does to the model and the optimizer (gates, function,
optimizer state, budget, protection of grown paths), on the fake and the real plastic network."""

import controller_fakes
import pytest
import torch
from controller_fakes import TinyPlasticNet, batches_from, clone, controller_for, paths_of, train

from plasticnet.models import PlasticResNet

net = controller_fakes.net


# ---- what a rewire does to the model and the optimizer ----


def test_grown_paths_start_at_gate_zero_and_leave_the_function_unchanged(net):
    model, make_batch = net
    model.eval()  # batch norm on running statistics, so both forwards see the same function
    inputs, _ = make_batch(torch.Generator().manual_seed(2))
    before = clone(model)
    event = controller_for(model, drop_count=2).step()
    dropped, grown = paths_of(event.dropped), paths_of(event.grown)
    assert all(model.path(*p).gate.item() == 0.0 for p in grown)
    before.set_active(sorted(set(before.active_paths()) - set(dropped)), keep_budget=False)  # the drop alone
    before.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), before(inputs))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        lambda params: torch.optim.Adam(params, lr=1e-3),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_optimizer_state_of_grown_and_dropped_paths_is_reset(net, make_optimizer):
    model, make_batch = net
    optimizer = make_optimizer(model.parameters())
    controller = controller_for(model, optimizer, interval=3, drop_count=2)
    batches = batches_from(make_batch, 3, seed=3)
    train(model, optimizer, controller, batches[:2])
    # give every inactive path a stale state, as if it had been trained in an earlier life
    inactive = set(model.candidate_paths()) - set(model.active_paths())
    for path in inactive:
        for param in model.path(*path).parameters():
            optimizer.state[param] = {"stale": torch.ones(())}
    kept_state = {param: optimizer.state[param] for param in model.parameters() if param in optimizer.state}
    (event,) = train(model, optimizer, controller, batches[2:])[-1:]
    changed = set(paths_of(event.dropped)) | set(paths_of(event.grown))
    assert len(changed) == 4
    changed_params = {param for path in changed for param in model.path(*path).parameters()}
    assert all(param not in optimizer.state for param in changed_params)
    survivors = [param for param in kept_state if param not in changed_params]
    assert survivors and all(optimizer.state[param] is kept_state[param] for param in survivors)
    train(model, optimizer, controller, batches_from(make_batch, 1, seed=4))  # the optimizer runs on


def test_budget_is_kept_over_many_rewires(net):
    model, make_batch = net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    controller = controller_for(model, optimizer, drop="taylor", grow="probe", total_steps=16, end_fraction=1.0)
    candidates = set(model.candidate_paths())
    previous = model.active_paths()
    for batch in batches_from(make_batch, 16, seed=5):
        (event,) = train(model, optimizer, controller, [batch])
        active = model.active_paths()
        assert len(active) == len(set(active)) == model.budget and set(active) <= candidates
        if event is not None:
            assert set(paths_of(event.dropped)) <= set(previous)
            assert set(paths_of(event.grown)).isdisjoint(previous)
            assert len(event.dropped) == len(event.grown) >= 1
        previous = active
    assert len(controller.history) == 15, "a rewire on every step before total_steps"


def test_just_grown_paths_are_not_dropped_at_the_next_rewire():
    model = TinyPlasticNet()
    controller = controller_for(model, drop="gate", drop_count=2)
    first = paths_of(controller.step().grown)
    # grown gates are 0, the smallest there is: only the protection keeps them
    second = controller.step()
    assert set(paths_of(second.dropped)).isdisjoint(first)
    third = controller.step()
    assert set(paths_of(third.dropped)) & set(first), "the protection lasts one rewire"


def test_rewire_without_inactive_candidates_changes_nothing():
    model = PlasticResNet("resnet18", base_width=8, max_span=1)  # every candidate is active
    before = {name: value.clone() for name, value in model.state_dict().items()}
    probes = []
    event = controller_for(model, grow="probe").step(probe=lambda: probes.append(1))
    assert event.dropped == [] and event.grown == [] and probes == [], "nothing to grow: no probe, no drop"
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_model_converted_after_the_controller_was_built(net):
    model, make_batch = net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    controller = controller_for(model, optimizer, drop="taylor", grow="probe", interval=2, drop_count=2)
    batches = batches_from(make_batch, 3, seed=8)  # step 2 rewires, step 3 trains the grown paths
    train(model, optimizer, controller, batches[:1])
    model.double()  # the same Parameter objects, so the optimizer and the controller still hold them
    double = [tuple(t.double() if t.is_floating_point() else t for t in batch) for batch in batches[1:]]
    (event,) = [e for e in train(model, optimizer, controller, double) if e]
    grown = paths_of(event.grown)
    assert len(grown) == 2 and all(model.path(*p).gate.dtype == torch.float64 for p in grown)
    assert all(model.path(*p).gate.item() != 0.0 for p in grown), "the grown paths train after the rewire"


def test_no_rewire_after_end_fraction_of_training():
    model = TinyPlasticNet()
    controller = controller_for(model, interval=2, total_steps=20, end_fraction=0.5)
    events = [controller.step() for _ in range(20)]
    assert [t for t, event in enumerate(events, start=1) if event is not None] == [2, 4, 6, 8]
