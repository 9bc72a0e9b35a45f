"""PlasticResNet: the ordinary ResNet at init="resnet", gradients only for active paths,
state_dict round trips, probing, torch.compile, channels_last, the original PlasticNet's network
(its topology API is tested in test_topology.py)."""

import copy
import itertools

import pytest
import torch
import torchvision
from helpers import randomize_batchnorm
from torch import nn

import plasticnet
from plasticnet.models import PlasticResNet

TINY = dict(base_width=8)


def cifar_torchvision(arch: str, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet with the cifar stem: 3x3 stride-1 conv, no max-pool."""
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def torchvision_to_plastic(state: dict, nodes_per_stage) -> dict:
    """torchvision ResNet keys -> PlasticResNet keys: block b of layer s is path (j-1 -> j)."""
    first_node = [sum(nodes_per_stage[:s]) + 1 for s in range(len(nodes_per_stage))]
    mapped = {}
    for key, value in state.items():
        head, *rest = key.split(".")
        if head in ("conv1", "bn1"):
            mapped[f"stem.{key}"] = value
        elif head == "fc":
            mapped[key] = value
        else:
            j = first_node[int(head[len("layer") :]) - 1] + int(rest[0])
            if rest[1] == "downsample":
                mapped[f"trunk.{j - 1}." + ".".join(rest[2:])] = value
            else:
                mapped[f"paths.{j - 1}_{j}.body." + ".".join(rest[1:])] = value
    return mapped


def test_torchvision_weights_map_onto_chain_paths():
    model = PlasticResNet("resnet18", max_span=1, **TINY)
    tv_keys = torchvision_to_plastic(torchvision.models.resnet18(num_classes=10).state_dict(), (2, 2, 2, 2))
    assert set(tv_keys) <= set(model.state_dict())


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_active_parameter_count_matches_torchvision(arch, stem):
    tv = cifar_torchvision(arch) if stem == "cifar" else getattr(torchvision.models, arch)(num_classes=10)
    model = PlasticResNet(arch, num_classes=10, stem=stem, max_span=2)
    expected = sum(p.numel() for p in tv.parameters())
    assert model.num_parameters(active_only=True, gates=False) == expected
    assert model.num_parameters(active_only=True) == expected + model.num_nodes  # one gate per active path
    inactive = sum(
        p.numel()
        for i, j in set(model.candidate_paths()) - set(model.active_paths())
        for p in model.path(i, j).parameters()
    )
    assert model.num_parameters() == expected + model.num_nodes + inactive > model.num_parameters(active_only=True)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])  # one per body kind
def test_resnet_init_computes_torchvision_resnet(arch):
    torch.set_default_dtype(torch.float64)
    try:
        tv = cifar_torchvision(arch)
        model = PlasticResNet(arch, num_classes=10, max_span=2)
    finally:
        torch.set_default_dtype(torch.float32)
    randomize_batchnorm(tv)
    nodes_per_stage = (2, 2, 2, 2) if arch == "resnet18" else (3, 4, 6, 3)
    state = model.state_dict()
    state.update(torchvision_to_plastic(tv.state_dict(), nodes_per_stage))
    model.load_state_dict(state)
    assert model.active_paths() == [(j - 1, j) for j in range(1, sum(nodes_per_stage) + 1)]
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for train in (False, True):
        tv.train(train), model.train(train)
        torch.testing.assert_close(model(x), tv(x))
    model(x).square().sum().backward()
    tv(x).square().sum().backward()
    torch.testing.assert_close(model.stem.conv1.weight.grad, tv.conv1.weight.grad)
    torch.testing.assert_close(model.path(0, 1).body.conv1.weight.grad, tv.layer1[0].conv1.weight.grad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arch="resnet19"), "arch: expected one of"),
        (dict(init="rigl"), "init: expected one of"),
        (dict(stem="mnist"), "stem: expected one of"),
        (dict(budget=7), "budget: init='resnet'"),
        (dict(init="random", budget=1000), r"budget: expected an int in \[0, 19\]"),
        (dict(max_span=0), "max_span: expected an int >= 1"),
        (dict(gate_init="two"), "gate_init: expected one of"),
        (dict(nodes_per_stage=(2, 2)), "stage_strides: expected 2 values"),
        (dict(initial_paths=[(0, 1)]), "initial_paths: only init='random'"),
        (dict(init="random", budget=1, initial_paths=[(0, 1), (1, 2)]), "at most budget=1"),
        (dict(arch="resnet18", groups=2), "basic bodies support only"),
        (dict(budget_per_stage=(2, 2, 2)), "budget_per_stage: expected 4 values"),
        (dict(init="random", budget_per_stage=(4, 2, 2, 2)), "stage 0 has 3 candidate paths"),
        (dict(init="random", budget=8, budget_per_stage=(2, 2, 2, 1)), "sums to 7, but budget is 8"),
        (dict(budget_per_stage=(3, 1, 2, 2)), "budget_per_stage: init='resnet'"),
    ],
)
def test_constructor_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlasticResNet(**{**TINY, **kwargs})


def test_inactive_paths_get_no_gradient_and_are_skipped_by_sgd():
    model = PlasticResNet(**TINY)
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()  # every chain path now holds a gradient
    active = [p for p in model.active_paths() if p != (2, 3)] + [(1, 3)]
    model.set_active(active)
    assert model.path(2, 3).gate.grad is None and not model.path(2, 3).gate.requires_grad
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = copy.deepcopy(model.state_dict())
    model.zero_grad(set_to_none=True)
    for _ in range(2):
        model(x).square().mean().backward()
        optimizer.step()
    for i, j in model.candidate_paths():
        for name, param in model.path(i, j).named_parameters():
            key = f"paths.{i}_{j}.{name}"
            if (i, j) in active:
                assert param.grad is not None and not torch.equal(param, before[key]), key
            else:
                assert param.grad is None and torch.equal(param, before[key]), key


def test_state_dict_round_trip_restores_topology_into_any_model():
    source = PlasticResNet(init="random", seed=1, budget=6, **TINY)
    with torch.no_grad():
        for gate in source.gates().values():
            gate.uniform_(0.2, 1.0)
    x = torch.randn(2, 3, 8, 8)
    source(x).sum().backward()  # non-zero PathScores to carry over
    target = PlasticResNet(init="resnet", gate_init="zero", zero_init_residual=True, score_decay=0.5, **TINY)
    assert target.active_paths() != source.active_paths() and target.budget == 8
    target.load_state_dict(source.state_dict())
    assert target.active_paths() == source.active_paths()
    assert target.budget == source.budget == 6  # a controller on the target keeps the loaded count
    assert target.gates().keys() == source.gates().keys()
    for name, stat in source.path_statistics().items():
        torch.testing.assert_close(target.path_statistics()[name], stat)
    source.eval(), target.eval()
    torch.testing.assert_close(target(x), source(x))
    assert {n for n, p in target.named_parameters() if p.requires_grad} == {
        n for n, p in source.named_parameters() if p.requires_grad
    }
    # the sites follow the loaded topology: a backward updates exactly the active slots
    target.train()
    updates = target.path_statistics()["updates"]
    target(x).sum().backward()
    grown = target.path_statistics()["updates"] - updates
    assert grown.tolist() == [float(p in source.active_paths()) for p in target.candidate_paths()]


def test_probing_keeps_the_output_and_records_contributions():
    torch.set_default_dtype(torch.float64)
    try:
        model = PlasticResNet(max_span=2, **TINY)
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model.eval()  # probed bodies would otherwise move their own BN running statistics
    expected = model(x)
    probed = [(0, 2), (3, 5)]
    with model.probing(probed):
        output = model(x)
        output.square().sum().backward()
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    stats = model.path_statistics()
    index = [model.candidate_paths().index(p) for p in probed]
    assert stats["updates"][index].tolist() == [1.0, 1.0]
    assert (stats["grow"][index] > 0).all()
    assert all(p.grad is None for i, j in probed for p in model.path(i, j).parameters())
    # "last" of a probed path is dLoss/dg at g = 0, as if the path were active with gate 0
    contributions = stats["last"][index]
    model.zero_grad(set_to_none=True)
    model.set_active(model.active_paths() + probed, keep_budget=False)
    for p in probed:
        with torch.no_grad():
            model.path(*p).gate.zero_()
    model(x).square().sum().backward()
    torch.testing.assert_close(torch.stack([model.path(*p).gate.grad for p in probed]).float(), contributions)


def test_probing_outside_the_context_computes_only_active_paths():
    model = PlasticResNet(max_span=2, **TINY)
    x = torch.randn(2, 3, 8, 8)
    with model.probing([(0, 2)]):
        pass
    model(x).sum().backward()
    assert model.path_statistics()["updates"][model.candidate_paths().index((0, 2))] == 0
    with pytest.raises(ValueError, match="inactive candidates"):
        with model.probing([(0, 1)]):
            pass
    with model.probing([(0, 2)]):
        # a nested context's exit would end the outer probe early
        with pytest.raises(RuntimeError, match="do not nest"):
            with model.probing([(1, 3)]):
                pass
        assert ("0_2", 0) in model._plans[1].sources


def test_reinitialized_grown_path_leaves_the_function_unchanged():
    model = PlasticResNet(max_span=2, **TINY).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    with torch.no_grad():
        model.path(4, 6).body[0].weight.fill_(1.0)
    model.reinitialize_path(4, 6)
    assert model.path(4, 6).gate.item() == 0.0
    assert model.path(4, 6).body[0].weight.std() > 0
    model.set_active(model.active_paths() + [(4, 6)], keep_budget=False)
    torch.testing.assert_close(model(x), expected)
    model.reinitialize_path(4, 6, zero_init_last_bn=True)
    assert (model.path(4, 6).body.bn2.weight == 0).all()


def test_reset_path_statistics_forgets_only_the_given_paths():
    model = PlasticResNet(**TINY)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    before = model.path_statistics()["taylor"]
    model.reset_path_statistics([(0, 1), (5, 6)])
    after = model.path_statistics()["taylor"]
    reset = [model.candidate_paths().index(p) for p in [(0, 1), (5, 6)]]
    assert (after[reset] == 0).all() and (before[reset] > 0).all()
    keep = [k for k in range(len(before)) if k not in reset]
    torch.testing.assert_close(after[keep], before[keep])


@pytest.mark.parametrize("compile_whole", [True, False], ids=["model", "parts"])
def test_torch_compile_matches_eager(compile_whole):
    model, twin = PlasticResNet(max_span=2, **TINY), PlasticResNet(max_span=2, **TINY)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    if compile_whole:
        compiled = torch.compile(twin, backend="aot_eager")
    else:
        twin.compile_parts(backend="aot_eager")
        compiled = twin
    for probed in ([], [(1, 3)]):
        with model.probing(probed), twin.probing(probed):
            expected, output = model(x), compiled(x)
            expected.square().sum().backward()
            output.square().sum().backward()
        torch.testing.assert_close(output, expected)
    torch.testing.assert_close(twin.path(0, 1).body.conv1.weight.grad, model.path(0, 1).body.conv1.weight.grad)
    for name, stat in model.path_statistics().items():
        torch.testing.assert_close(twin.path_statistics()[name], stat)


def test_channels_last_gives_the_same_output():
    model = PlasticResNet(init="random", seed=0, **TINY).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    output = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(output, expected)
    output.sum().backward()


def test_model_moves_with_its_topology():
    model = PlasticResNet(**TINY).to(torch.float64)
    y = model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert y.dtype == torch.float64
    y.sum().backward()
    assert model.path(0, 1).gate.grad is not None


def test_original_plasticnet_configuration_builds():
    model = PlasticResNet(
        "resnet50",
        10,
        init="random",
        budget=15,
        seed=0,
        max_span=1,
        stem="imagenet",
        stem_pool_stride=1,
        nodes_per_stage=(7, 10, 16, 7),
        stage_widths=(16, 32, 64, 128),
        stage_strides=(2, 2, 2, 2),
        stem_width=8,
        projection="conv3x3",
        gate_init="uniform",
        gate_position="after_relu",
        join_activation="none",
        initial_paths="stage_transitions",
    )
    assert model.num_nodes == 40 and len(model.candidate_paths()) == 40
    transitions = [(0, 1), (7, 8), (17, 18), (33, 34)]
    active = model.active_paths()
    assert len(active) == 15 and set(transitions) <= set(active)
    assert all(0 <= g.item() < 1 for g in model.gates().values())
    assert all(
        isinstance(model.trunk[j - 1][0], nn.Conv2d) and model.trunk[j - 1][0].kernel_size == (3, 3)
        for _, j in transitions
    )
    assert isinstance(model.stem.maxpool, nn.MaxPool2d) and model.stem.maxpool.stride == 1
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(model.path(*p).gate.grad is not None for p in active)


@pytest.mark.parametrize(
    "gate_position, join_activation", list(itertools.product(["join", "after_relu"], ["relu", "none"]))
)
def test_join_matches_its_definition(gate_position, join_activation):
    """n_j = act(T_j(n_{j-1}) + sum g f(n_i)), with f = relu(body) for gate_position="after_relu"."""
    torch.set_default_dtype(torch.float64)
    try:
        model = PlasticResNet(
            init="random",
            budget=6,
            seed=2,
            gate_init="uniform",
            gate_position=gate_position,
            join_activation=join_activation,
            **TINY,
        ).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    act = torch.relu if join_activation == "relu" else (lambda z: z)
    nodes = [model.stem(x)]
    for j in range(1, model.num_nodes + 1):
        z = model.trunk[j - 1](nodes[j - 1])
        for (i, jj), gate in model.gates().items():
            if jj == j:
                h = model.path(i, j).body(nodes[i])
                z = z + gate * (torch.relu(h) if gate_position == "after_relu" else h)
        nodes.append(act(z))
    torch.testing.assert_close(model(x), model.fc(nodes[-1].mean((2, 3))))


@pytest.mark.parametrize("backend", [b for b in plasticnet.available_backends("cpu") if b != "reference"])
def test_every_backend_matches_the_reference_backend(backend):
    model, twin = (
        PlasticResNet(max_span=2, backend="reference", **TINY),
        PlasticResNet(max_span=2, backend=backend, **TINY),
    )
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with model.probing([(1, 3)]), twin.probing([(1, 3)]):
        expected, output = model(x), twin(x)
        expected.square().sum().backward()
        output.square().sum().backward()
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(twin.path(0, 1).gate.grad, model.path(0, 1).gate.grad)
    for name, stat in model.path_statistics().items():
        torch.testing.assert_close(twin.path_statistics()[name], stat, rtol=1e-4, atol=1e-4)


def test_compile_parts_keeps_every_part_compiled_in_train_and_eval():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = PlasticResNet("resnet18", base_width=8, max_span=3)
    model.compile_parts(backend="eager")
    x = torch.randn(2, 3, 16, 16)
    model(x).sum().backward()
    model.eval()
    model(x)
    # instances share one forward code object: past Dynamo's cap on compiled variants per code
    # object, a frame fails to compile and every later part of that class runs eagerly
    assert counters["frames"]["total"] == counters["frames"]["ok"] > 8
    assert torch._dynamo.config.recompile_limit == 8  # raised only inside the parts' own calls


@pytest.mark.parametrize("option", [{"gate_position": "after_relu"}, {"join_activation": "none"}])
def test_state_dict_refuses_a_model_that_computes_another_join(option):
    # same shapes, other function: must not load silently
    source = PlasticResNet("resnet18", base_width=8, **option)
    with pytest.raises(ValueError, match=next(iter(option))):
        PlasticResNet("resnet18", base_width=8).load_state_dict(source.state_dict())
    PlasticResNet("resnet18", base_width=8, **option).load_state_dict(source.state_dict())
