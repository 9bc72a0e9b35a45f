"""PlasticResNet.to_static(): the active network alone, computing the plastic model's function, and
its exports (torch.export with either join, ONNX under onnxruntime, plain torch without plasticnet)."""

import subprocess
import sys

import pytest
import torch
from controller_fakes import controller_for, loss_on, resnet_batch
from helpers import randomize_batchnorm

from plasticnet.models import PlasticResNet
from plasticnet.models.static_network import StaticNetwork
from plasticnet.training.recipes import RECIPES

TINY = dict(base_width=4)
ARCHITECTURES = {
    "resnet18": dict(TINY),
    "random-span-3": dict(TINY, init="random", max_span=3, seed=3),
    "bottleneck": dict(TINY, arch="resnet50", nodes_per_stage=(2, 1, 1, 1), init="random", seed=1),
    "after-relu": dict(TINY, gate_position="after_relu", gate_init="uniform"),
    "no-join-activation": dict(TINY, join_activation="none", init="random", max_span=2, seed=2),
    "imagenet-stem-conv3x3": dict(TINY, stem="imagenet", projection="conv3x3", budget=6, init="random", seed=4),
    "plasticnet-2020": dict(
        {k: v for k, v in RECIPES["plasticnet-2020"]["model_options"].items() if k != "nodes_per_stage"},
        arch="resnet50",
        base_width=4,
        nodes_per_stage=(2, 3, 2, 2),
        stem="imagenet",
        budget=6,
        init="random",
        max_span=1,
        seed=0,
    ),
}


def plastic(options: dict) -> PlasticResNet:
    """A model whose eval-mode function is not trivial: BN statistics and gates of either sign."""
    model = randomize_batchnorm(PlasticResNet(**options))
    with torch.no_grad():
        for path in model.paths.values():
            path.gate.uniform_(-1.5, 1.5)
    return model.eval()


def assert_same_function(model: PlasticResNet, static: torch.nn.Module, size: int = 32) -> None:
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), static(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("join", ["fused", "reference"])
@pytest.mark.parametrize("fold_gates", [True, False])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_static_module_computes_the_plastic_function(name, fold_gates, join):
    model = plastic(ARCHITECTURES[name])
    static = model.to_static(fold_gates=fold_gates, join=join)
    assert isinstance(static, StaticNetwork) and not static.training
    assert_same_function(model, static, size=64 if model.stem.maxpool.__class__.__name__ == "MaxPool2d" else 32)
    gates = not fold_gates
    assert static.num_parameters() == model.num_parameters(active_only=True, gates=gates)
    assert static.active_paths == model.active_paths()


def test_only_active_paths_and_no_plastic_state_remain():
    model = plastic(ARCHITECTURES["random-span-3"])
    static = model.to_static()
    bodies = sum(len(node.bodies) for node in static.nodes)
    assert bodies == len(model.active_paths()) < len(model.candidate_paths())
    names = [name for name, _ in static.named_modules()] + list(static.state_dict())
    assert not [n for n in names if "scores" in n or "paths." in n or "join_scale" in n]
    inactive = set(model.candidate_paths()) - set(model.active_paths())
    inactive_weights = {model.path(*p).body.conv1.weight.data_ptr() for p in inactive}
    assert not inactive_weights & {t.data_ptr() for t in static.state_dict().values()}


def test_gates_fold_into_the_last_norm_except_where_that_changes_the_function():
    model = plastic(ARCHITECTURES["after-relu"])
    paths = model.active_paths()
    negative, positive = paths[0], paths[1]
    with torch.no_grad():
        model.path(*negative).gate.fill_(-0.5)
        model.path(*positive).gate.fill_(0.7)
    static = model.to_static(fold_gates=True, join="reference")
    # relu(s z) = s relu(z) only for s >= 0: the negative gate stays an explicit scale
    assert negative not in static.folded and positive in static.folded
    node = static.nodes[negative[1] - 1]
    assert node.gates.tolist()[node.sources.index(negative[0])] == pytest.approx(-0.5)
    assert not any(isinstance(t, torch.nn.Parameter) for t in (n.gates for n in static.nodes))
    assert_same_function(model, static)
    folded_bn = static.nodes[positive[1] - 1].bodies[0].bn2
    torch.testing.assert_close(folded_bn.weight, 0.7 * model.path(*positive).body.bn2.weight)


def test_a_path_being_faded_in_exports_with_its_join_scale():
    model = plastic(ARCHITECTURES["resnet18"])
    model.start_ramp([model.active_paths()[2]], steps=4)
    model.advance_ramp()
    assert_same_function(model, model.to_static())


def test_a_network_just_rewired_by_the_controller():
    model = PlasticResNet("resnet18", base_width=4, max_span=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    controller = controller_for(model, optimizer, drop="taylor", grow="probe", fraction=0.3)
    generator = torch.Generator().manual_seed(0)
    before = model.active_paths()
    for _ in range(3):
        batch = resnet_batch(generator)
        model.train()
        loss_on(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        controller.step(probe=lambda batch=batch: loss_on(model, batch).backward())
    assert model.active_paths() != before
    model.eval()
    static = model.to_static()
    assert static.active_paths == model.active_paths()
    assert_same_function(model, static)


def test_to_static_refuses_bad_arguments():
    model = PlasticResNet(base_width=4)
    with pytest.raises(ValueError, match="join: expected one of"):
        model.to_static(join="onnx")
    with pytest.raises(TypeError, match="fold_gates: expected a bool"):
        model.to_static(fold_gates="yes")


@pytest.mark.parametrize("join", ["fused", "reference"])
def test_torch_export_of_either_join(join):
    model = plastic(ARCHITECTURES["random-span-3"])
    static = model.to_static(join=join)
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(static, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert ("plasticnet.residual_aggregate.default" in ops) == (join == "fused")
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_the_reference_export_runs_with_plain_torch_alone(tmp_path):
    model = plastic(ARCHITECTURES["after-relu"])
    x = torch.randn(2, 3, 32, 32)
    path, inputs, expected = tmp_path / "net.pt2", tmp_path / "x.pt", tmp_path / "y.pt"
    torch.export.save(torch.export.export(model.to_static(join="reference"), (x,)), path)
    torch.save(x, inputs)
    with torch.no_grad():
        torch.save(model(x), expected)
    script = (
        "import sys, torch\n"
        f"y = torch.export.load({str(path)!r}).module()(torch.load({str(inputs)!r}))\n"
        f"torch.testing.assert_close(y, torch.load({str(expected)!r}), rtol=1e-5, atol=1e-5)\n"
        "assert not [m for m in sys.modules if m.startswith('plasticnet')]\n"
        "print('ok')\n"
    )
    # -I: isolated, so neither the working directory nor PYTHONPATH can make plasticnet importable
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_onnx_export_matches_under_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (CI installs it)")
    pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's exporter) is not installed")
    model = plastic(ARCHITECTURES["bottleneck"])
    x = torch.randn(2, 3, 32, 32)
    batch = {"x": {0: torch.export.Dim("batch", min=1)}}
    program = torch.onnx.export(model.to_static(join="reference"), (x,), dynamo=True, dynamic_shapes=batch)
    program.save(str(tmp_path / "net.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, 3, 32, 32)  # another batch size than the example's
    (got,) = session.run(None, {session.get_inputs()[0].name: x5.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x5), rtol=1e-4, atol=1e-5)
