"""`plasticnet export` and `plasticnet eval` on tiny synthetic runs, plastic and static: every
format and join, evaluated on the run directory and on the files, agreeing with the training run's
own test accuracy; load_run; and one-line errors for what a user can get wrong."""

import json
import re

import pytest
import torch
from helpers import one_line_error, plasticnet, tiny_synthetic_flags

import plasticnet as package
from plasticnet.cli import main
from plasticnet.deploy.runs import load_run_checkpoint
from plasticnet.models import PlasticResNet, StaticResNet
from plasticnet.training.checkpoint import load_checkpoint, save_checkpoint
from plasticnet.training.state import INPUT_STATISTICS

TINY = tiny_synthetic_flags(
    train_size=64, val_size=32, test_size=48, batch_size=32, epochs=2, rewire_interval=2, progress=False, threads=1
)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


HAS_ONNX = _importable("onnxruntime") and _importable("onnxscript")
FORMATS = [("pt2", "fused"), ("pt2", "reference"), ("state_dict", "fused"), ("state_dict", "reference")]
FORMATS += [pytest.param("onnx", "reference", marks=pytest.mark.skipif(not HAS_ONNX, reason="onnxruntime missing"))]
EXTENSION = {"pt2": ".pt2", "onnx": ".onnx", "state_dict": ".pt"}


@pytest.fixture(scope="module", params=["plastic-resnet18", "resnet18"])
def run_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / request.param
    extra = ["--max-span", "2", "--budget-per-stage", "2,2,1,2"] if request.param.startswith("plastic") else []
    done = plasticnet("train", *TINY, "--model", request.param, *extra, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def best_test_accuracy(run_dir) -> float:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(metrics, key=lambda m: m["val_acc"])["test_acc"]  # best.pt: the first epoch of the best val acc


def evaluate(capsys, *argv) -> float:
    assert main(["eval", *map(str, argv), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    return float(re.search(r"accuracy (\d\.\d+)\s+(\d+) images/s", out).group(1))


def test_eval_of_the_run_dir_and_its_checkpoints_reproduces_the_training_runs_test_accuracy(run_dir, capsys):
    expected = best_test_accuracy(run_dir)
    assert evaluate(capsys, run_dir) == pytest.approx(expected, abs=1e-4)
    assert evaluate(capsys, run_dir / "best.pt") == pytest.approx(expected, abs=1e-4)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    assert evaluate(capsys, run_dir, "--checkpoint", "last") == pytest.approx(last, abs=1e-4)


@pytest.mark.parametrize("format, join", FORMATS)
def test_export_then_eval_of_the_file_matches_the_run(run_dir, format, join, capsys, tmp_path):
    out = tmp_path / f"net{EXTENSION[format]}"
    assert main(["export", str(run_dir), "--format", format, "--join", join, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported" in printed and "MACs/image" in printed
    plastic = "plastic" in run_dir.name
    assert ("active paths (7)" in printed) == plastic  # the per-stage budget 2,2,1,2
    exported_parameters = int(re.search(r"exported\s+([\d,]+)", printed).group(1).replace(",", ""))
    model, _ = package.load_run(str(run_dir))
    if plastic:
        assert exported_parameters == model.num_parameters(active_only=True, gates=False)
    else:
        assert exported_parameters == sum(p.numel() for p in model.parameters())
    assert evaluate(capsys, out) == pytest.approx(best_test_accuracy(run_dir), abs=1e-4)


def test_export_writes_beside_the_checkpoint_by_default_and_tta_evaluates(run_dir, capsys):
    assert main(["export", str(run_dir), "--checkpoint", "last"]) == 0
    written = run_dir / "last-static-fused.pt2"
    assert written.is_file()
    evaluate(capsys, written, "--tta")  # the mirrored images go through the exported program too
    written.unlink()


def test_load_run_returns_the_checkpoints_network_in_eval_mode(run_dir):
    model, config = package.load_run(str(run_dir), checkpoint="last")
    assert not model.training and config.model == run_dir.name
    assert isinstance(model, PlasticResNet if config.plastic else StaticResNet)
    saved = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    with pytest.raises(ValueError, match="checkpoint: expected one of"):
        package.load_run(str(run_dir), checkpoint="first")


# ---- what a user can get wrong: one line, exit code 2 --------------------------------------


@pytest.fixture(scope="module")
def plastic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "run"
    done = plasticnet("train", *TINY, "--epochs", "1", "--model", "plastic-resnet18", "--max-span", "2", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_export_refusals(plastic_run, tmp_path):
    one_line_error(plasticnet("export", tmp_path / "nowhere"), "no config.json there")
    one_line_error(plasticnet("export", plastic_run, "--format", "onnx"), "--format onnx needs --join reference")
    one_line_error(plasticnet("export", plastic_run, "--out", tmp_path), "is a directory")
    one_line_error(plasticnet("export", plastic_run, "--out", tmp_path / "no" / "dir" / "x.pt2"), "cannot write")


def test_a_damaged_checkpoint_is_one_line(plastic_run, tmp_path):
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "config.json").write_bytes((plastic_run / "config.json").read_bytes())
    data = bytearray((plastic_run / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "best.pt").write_bytes(bytes(data))
    for command in ("export", "eval"):
        one_line_error(plasticnet(command, damaged), "best.pt")


def test_corrupt_and_foreign_files_are_one_line(plastic_run, tmp_path):
    good = tmp_path / "good.pt2"
    assert plasticnet("export", plastic_run, "--out", good).returncode == 0
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(plasticnet("eval", truncated), str(truncated))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    one_line_error(plasticnet("eval", foreign), "not a plasticnet export")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    one_line_error(plasticnet("eval", text), "not a readable ONNX model" if HAS_ONNX else "onnxruntime")
    one_line_error(plasticnet("eval", tmp_path / "missing.pt2"), "no such file")
    one_line_error(plasticnet("eval", good, "--dataset", "cifar10", "--data-dir", tmp_path), "cifar")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--device", "mps"], "--device: expected auto, cpu, cuda or cuda:N"),
        (["--test-size", "0"], "--test-size: expected a positive integer"),
        (["--batch-size", "0"], "--batch-size and --threads: expected positive integers"),
        (["--checkpoint", "last", "--dataset", "imagefolder"], "image folder"),
    ],
)
def test_eval_refusals(plastic_run, argv, needle):
    one_line_error(plasticnet("eval", plastic_run, *argv), needle)


def test_a_checkpoint_without_input_statistics_has_them_recomputed_from_its_run(plastic_run, tmp_path):
    recorded = load_run_checkpoint(str(plastic_run))
    old = tmp_path / "run"
    old.mkdir()
    (old / "config.json").write_bytes((plastic_run / "config.json").read_bytes())
    state = load_checkpoint(str(plastic_run / "best.pt"))
    save_checkpoint(str(old / "best.pt"), {k: v for k, v in state.items() if k not in INPUT_STATISTICS})
    recomputed = load_run_checkpoint(str(old))  # as the trainer computed them: the same training split
    torch.testing.assert_close(recomputed.mean, recorded.mean)
    torch.testing.assert_close(recomputed.std, recorded.std)


@pytest.mark.skipif(not HAS_ONNX, reason="onnxruntime or onnxscript missing")
def test_an_onnx_model_without_plasticnet_metadata_is_one_line(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2).eval(), (torch.randn(2, 3),), str(path), dynamo=True, verbose=False)
    one_line_error(plasticnet("eval", path), "its plasticnet metadata is missing or damaged")
