"""PlasticityController's variants: how long a grown path is protected (protect_rewires), what
weights it regrows with (regrow), how it joins (grown_gate, the fade-in of its join scale), and
budgets kept per stage."""

from collections import Counter

import pytest
import torch
from controller_fakes import (
    TinyPlasticNet,
    clone,
    controller_for,
    loss_on,
    paths_of,
    resnet_batch,
    set_gate,
    tiny_batch,
)

from plasticnet.models import PlasticResNet
from plasticnet.plasticity.controller import REGROW_MODES


def tiny_resnet(**options):
    return PlasticResNet("resnet18", base_width=4, **options)


def images(seed=0):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def make_weakest(model, weak):
    """Gate 0 for `weak`, 1 for every other active path: a gate criterion would drop `weak` first."""
    for path in model.active_paths():
        set_gate(model, path, 0.0 if path == weak else 1.0)


def rewires_left(controller):
    return {(i, j): left for i, j, left in controller.state_dict()["protected"]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"protect_rewires": -1}, "protect_rewires: expected an int >= 0"),
        ({"protect_rewires": True}, "protect_rewires: expected an int >= 0"),
        ({"protect_rewires": 1.5}, "protect_rewires: expected an int >= 0"),
        ({"regrow": "reuse"}, "regrow: expected one of"),
        ({"grown_gate": "one"}, "grown_gate: expected one of"),
    ],
)
def test_controller_rejects_bad_variant_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        controller_for(TinyPlasticNet(), **kwargs)


# ---- protect_rewires ----


@pytest.mark.parametrize("protect", [0, 1, 3])
def test_a_grown_path_is_safe_for_exactly_protect_rewires_rewires(protect):
    model = TinyPlasticNet()
    controller = controller_for(model, drop="gate", drop_count=1, protect_rewires=protect)
    (grown,) = paths_of(controller.step().grown)
    assert rewires_left(controller).get(grown, 0) == protect
    for rewire in range(1, protect + 2):
        make_weakest(model, grown)
        dropped = paths_of(controller.step().dropped)
        if rewire <= protect:
            assert grown not in dropped and grown in model.active_paths(), f"protected at rewire {rewire}"
            assert rewires_left(controller).get(grown, 0) == protect - rewire
        else:
            assert dropped == [grown], "the weakest path is dropped once its protection is over"


def test_protection_counts_survive_a_state_dict_round_trip(tmp_path):
    model = TinyPlasticNet()
    controller = controller_for(model, drop_count=1, protect_rewires=3)
    for _ in range(3):
        controller.step()
    saved = controller.state_dict()
    assert sorted(left for *_, left in saved["protected"]) == [1, 2, 3]
    torch.save(saved, tmp_path / "controller.pt")
    resumed_model = clone(model)
    resumed = controller_for(resumed_model, drop_count=1, protect_rewires=3, seed=99)
    resumed.load_state_dict(torch.load(tmp_path / "controller.pt", weights_only=True))
    assert resumed.state_dict()["protected"] == saved["protected"]
    assert [resumed.step() for _ in range(4)] == [controller.step() for _ in range(4)]


def test_a_state_of_the_previous_format_protects_its_paths_for_one_rewire():
    model = TinyPlasticNet()
    controller = controller_for(model, drop_count=1, protect_rewires=3)
    (grown,) = paths_of(controller.step().grown)
    state = controller.state_dict()
    state["protected"] = [[i, j] for i, j, _ in state["protected"]]  # before the counts, entries were [i, j]
    resumed_model = clone(model)
    resumed = controller_for(resumed_model, drop_count=1, protect_rewires=3)
    resumed.load_state_dict(state)
    assert rewires_left(resumed) == {grown: 1}
    make_weakest(resumed_model, grown)
    assert grown not in paths_of(resumed.step().dropped)
    make_weakest(resumed_model, grown)
    assert paths_of(resumed.step().dropped) == [grown]


# ---- regrow ----

REGROW_NETS = {
    "tiny": (lambda: TinyPlasticNet(depth=2, max_span=2), tiny_batch),
    "resnet": (lambda: tiny_resnet(nodes_per_stage=(2,), stage_strides=(1,), max_span=2), resnet_batch),
}


def body_state(model, path):
    return {name: value.clone() for name, value in model.path(*path).body.state_dict().items()}


@pytest.mark.parametrize(
    "net_name, regrow, grown_gate",
    [(name, regrow, "zero") for name in REGROW_NETS for regrow in REGROW_MODES]
    + [("resnet", regrow, "ramp") for regrow in REGROW_MODES],
)
def test_a_regrown_path_keeps_its_weights_only_when_reactivated(net_name, regrow, grown_gate):
    make_model, make_batch = REGROW_NETS[net_name]
    model = make_model()  # candidates (0, 1), (0, 2), (1, 2); (0, 2) starts inactive
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    controller = controller_for(model, optimizer, drop_count=1, regrow=regrow, grown_gate=grown_gate)
    with torch.no_grad():
        for param in model.path(0, 1).body.parameters():
            param.add_(torch.randn_like(param))  # weights no initialisation would draw
    had = body_state(model, (0, 1))
    make_weakest(model, (0, 1))
    first = controller.step()
    assert (paths_of(first.dropped), paths_of(first.grown)) == ([(0, 1)], [(0, 2)])
    loss_on(model, make_batch(torch.Generator().manual_seed(0))).backward()
    optimizer.step()  # a dropped path's weights must not move while it is inactive
    optimizer.zero_grad()
    second = controller.step()  # (0, 2) is protected: (1, 2) goes and (0, 1), the one left, regrows
    assert (paths_of(second.dropped), paths_of(second.grown)) == ([(1, 2)], [(0, 1)])
    now = body_state(model, (0, 1))
    same = {name: torch.equal(now[name], had[name]) for name in had}
    weights = [name for name in had if name.endswith("weight")]
    if regrow == "reactivate":
        assert all(same.values()), f"reactivated with other weights: {[n for n, s in same.items() if not s]}"
    else:
        assert not any(same[name] for name in weights), "fresh growth reinitialises every weight"
    assert model.path(0, 1).gate.item() == (1.0 if grown_gate == "ramp" else 0.0)


def test_fresh_and_reactivated_growth_make_the_same_random_decisions():
    histories, generators = [], []
    for regrow in REGROW_MODES:
        model = TinyPlasticNet()
        controller = controller_for(model, drop_count=2, regrow=regrow, seed=5)
        for _ in range(8):
            controller.step()
        histories.append(controller.history)
        generators.append(controller.state_dict()["generator"])
    regrown = Counter(path for event in histories[0] for path in paths_of(event.grown))
    assert len(histories[0]) == 8 and max(regrown.values()) > 1, "some path grew twice"
    assert histories[0] == histories[1]
    assert torch.equal(generators[0], generators[1]), "both modes leave the generator at the same state"


# ---- grown_gate="ramp" ----


def test_ramp_fades_a_grown_path_in_over_one_interval():
    model = tiny_resnet().eval()  # batch norm on running statistics: one function throughout
    x = images()
    weak = model.active_paths()[3]
    set_gate(model, weak, 0.0)  # the one gate below the threshold: dropping it keeps the function
    controller = controller_for(model, drop="threshold", interval=4, grown_gate="ramp")
    with torch.no_grad():
        before = model(x)
    assert [controller.step() for _ in range(3)] == [None] * 3
    event = controller.step()
    (grown,) = paths_of(event.grown)
    assert paths_of(event.dropped) == [weak]
    index = model.candidate_paths().index(grown)
    plan = model._plans[grown[1] - 1]
    assert model.path(*grown).gate.item() == 1.0 and model.join_scale[index].item() == 0.0
    assert plan.scaled is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # at scale 0 growth keeps the function
    scales, outputs = [], []
    for _ in range(4):  # the fourth is a rewire step, which drops nothing: every gate is 1
        controller.step()
        scales.append(model.join_scale[index].item())
        with torch.no_grad():
            outputs.append(model(x))
    assert scales == [0.25, 0.5, 0.75, 1.0]
    assert torch.equal(model.join_scale, torch.ones_like(model.join_scale))
    assert all(plan.scaled is None for plan in model._plans), "at scale 1 the path is an ordinary one"
    ordinary = tiny_resnet().eval()
    ordinary.load_state_dict(model.state_dict())  # the same paths active, none fading in
    assert grown in ordinary.active_paths()
    with torch.no_grad():
        torch.testing.assert_close(outputs[-1], ordinary(x))
        assert not torch.allclose(outputs[1], ordinary(x)), "at scale 0.5 the path joins at half strength"


def test_ramp_needs_a_model_that_can_fade_paths_in():
    with pytest.raises(TypeError, match="grown_gate='ramp': the model .* has no start_ramp"):
        controller_for(TinyPlasticNet(), grown_gate="ramp")


def test_a_run_resumed_in_the_middle_of_a_fade_in_continues_it():
    model = tiny_resnet().eval()
    set_gate(model, model.active_paths()[3], 0.0)
    controller = controller_for(model, drop="threshold", interval=4, grown_gate="ramp")
    for _ in range(5):
        controller.step()
    resumed_model = tiny_resnet().eval()
    resumed_model.load_state_dict(model.state_dict())
    resumed = controller_for(resumed_model, drop="threshold", interval=4, grown_gate="ramp")
    resumed.load_state_dict(controller.state_dict())
    controller.step()
    resumed.step()
    assert model.join_scale.min().item() == 0.5
    assert torch.equal(resumed_model.join_scale, model.join_scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ramp_steps_that_do_not_rewire_do_not_synchronise_cuda():
    model = tiny_resnet().cuda()
    set_gate(model, model.active_paths()[3], 0.0)
    controller = controller_for(model, drop="threshold", interval=4, grown_gate="ramp")
    for _ in range(4):
        controller.step()
    assert model.join_scale.min().item() == 0.0, "the rewire at step 4 started a fade"
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert [controller.step() for _ in range(3)] == [None] * 3
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- budgets per stage ----


def stage_counts(model):
    counts = Counter(model.stage_of(path) for path in model.active_paths())
    return tuple(counts[stage] for stage in range(4))


def stage_counts_over_rewires(budget_per_stage, drop, rewires=30):
    """Stage counts after each of `rewires` rewires of a resnet18 (2 nodes per stage) whose
    active gates are drawn anew before each, and the rewires themselves."""
    model = tiny_resnet(budget_per_stage=budget_per_stage)
    controller = controller_for(model, drop=drop, total_steps=rewires + 1, end_fraction=1.0, seed=1)
    gates = torch.Generator().manual_seed(2)
    counts = []
    for _ in range(rewires):
        for path in model.active_paths():
            set_gate(model, path, torch.rand((), generator=gates).item())
        controller.step()
        counts.append(stage_counts(model))
    return counts, controller.history


@pytest.mark.parametrize("drop", ["gate", "threshold"])
def test_each_stage_keeps_its_budget_at_every_rewire(drop):
    counts, history = stage_counts_over_rewires((2, 2, 2, 2), drop)
    assert counts == [(2, 2, 2, 2)] * len(counts)
    model = tiny_resnet()
    for event in history:
        dropped = Counter(model.stage_of(path) for path in paths_of(event.dropped))
        assert dropped == Counter(model.stage_of(path) for path in paths_of(event.grown))
    rewired_stages = {model.stage_of(path) for event in history for path in paths_of(event.dropped)}
    assert rewired_stages == {0, 1, 2, 3}, "every stage was rewired"


def test_under_one_global_budget_paths_move_between_stages():
    counts, _ = stage_counts_over_rewires(None, "gate")
    assert any(count != (2, 2, 2, 2) for count in counts)


def test_a_drop_that_its_stage_cannot_replace_is_not_made():
    model = tiny_resnet(budget_per_stage=(2, 2, 2, 2))  # stage 0: candidates (0, 1), (1, 2), (0, 2)
    for path, gate in {(0, 1): 0.1, (1, 2): 0.2, (2, 3): 0.3}.items():
        set_gate(model, path, gate)
    event = controller_for(model, drop="threshold").step()
    assert paths_of(event.dropped) == [(0, 1), (2, 3)], "(1, 2) stays: (0, 2) is stage 0's one inactive path"
    assert (0, 2) in paths_of(event.grown) and stage_counts(model) == (2, 2, 2, 2)
    assert (1, 2) in model.active_paths()
