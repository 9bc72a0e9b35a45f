"""`plasticnet train` end to end on tiny synthetic settings: run dir, resume, CLI errors."""
import argparse
import json
import os

import pytest
import torch

from plasticnet.training import Trainer, cli
from plasticnet.training.checkpoint import load_checkpoint
from plasticnet.training.plots import topology_timeline
from plasticnet.training.run_dir import read_jsonl

# Small enough for seconds per epoch on one CPU core; rewiring every 3 of the 6 steps per epoch.
TINY_ARGS = ["--dataset", "synthetic", "--train-size", "96", "--test-size", "32", "--batch-size", "16",
             "--base-width", "4", "--device", "cpu", "--no-progress", "--log-every", "2", "--rewire-interval", "3",
             "--rewire-end", "1.0", "--warmup-epochs", "0.5"]
ISSUE_OPTIONS = ["--model", "--dataset", "--data-dir", "--epochs", "--batch-size", "--lr", "--base-width", "--budget",
                 "--max-span", "--drop", "--grow", "--rewire-fraction", "--rewire-interval", "--seed", "--out",
                 "--resume", "--train-size", "--test-size", "--device", "--backend", "--compile", "--recipe",
                 "--eval-every-steps"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plasticnet train", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_arguments(parser)
    return parser


def run_cli(argv: list[str]) -> int:
    return cli.run(parser().parse_args(argv))


def comparable(metrics: list[dict]) -> list[dict]:
    """metrics.jsonl records without the wall-clock throughput."""
    return [{k: v for k, v in m.items() if k != "images_per_s"} for m in metrics]


def test_help_documents_every_option_with_its_default():
    help_text = parser().format_help()
    for option in ISSUE_OPTIONS:
        assert option in help_text
    options = [a for a in parser()._actions if a.option_strings and a.dest != "help"]
    assert help_text.count("(default:") == len(options)


def test_tiny_plastic_run_writes_the_whole_run_dir(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*TINY_ARGS, "--model", "plastic-resnet18", "--epochs", "2", "--out", str(out),
                    "--eval-every-steps", "4"]) == 0
    assert {"config.json", "metrics.jsonl", "events.jsonl", "step_evals.jsonl", "curves.png", "topology.png",
            "last.pt", "best.pt"} <= set(os.listdir(out))
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "plastic-resnet18" and config["world_size"] == 1 and config["versions"]["torch"]
    metrics = read_jsonl(str(out / "metrics.jsonl"))
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s"} <= set(m)
        assert len(m["active_paths"]) == 8  # resnet18's budget: its 8 blocks
    events = read_jsonl(str(out / "events.jsonl"))
    assert [e["step"] for e in events] == [3, 6, 9]  # step 12 is the last step: end_fraction excludes it
    for event in events:
        assert len(event["dropped"]) == len(event["grown"]) >= 1
        assert len(event["active_paths"]) == 8
    assert [e["step"] for e in read_jsonl(str(out / "step_evals.jsonl"))] == [4, 8, 12]
    state = load_checkpoint(str(out / "last.pt"))
    assert state["epoch"] == 2 and state["step"] == 12
    assert [list(p) for p in metrics[-1]["active_paths"]] == events[-1]["active_paths"]
    # topology.png's timeline starts from the initial topology (init "resnet": the chain j-1 -> j)
    timeline = topology_timeline(metrics, events)
    assert [tuple(p) for p in timeline[0][1]] == [(j - 1, j) for j in range(1, 9)]
    assert [step for step, _ in timeline] == [0, 3, 6, 9]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    argv = [*TINY_ARGS, "--model", "plastic-resnet18", "--epochs", "3", "--seed", "5"]
    whole = Trainer(cli.parse_config([*argv, "--out", str(tmp_path / "whole")]))
    whole.fit()
    interrupted = Trainer(cli.parse_config([*argv, "--out", str(tmp_path / "resumed")]))
    interrupted.fit(until_epoch=1)
    assert run_cli(["--resume", str(tmp_path / "resumed"), "--no-progress"]) == 0

    def logs(name):
        return read_jsonl(str(tmp_path / "whole" / name)), read_jsonl(str(tmp_path / "resumed" / name))

    whole_metrics, resumed_metrics = logs("metrics.jsonl")
    assert comparable(whole_metrics) == comparable(resumed_metrics)
    whole_events, resumed_events = logs("events.jsonl")
    assert whole_events == resumed_events and len(whole_events) >= 3
    a, b = (load_checkpoint(str(tmp_path / run / "last.pt"))["model"] for run in ("whole", "resumed"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_extends_to_more_epochs_and_refuses_changed_options(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli([*TINY_ARGS, "--model", "resnet18", "--epochs", "1", "--out", out]) == 0
    assert run_cli(["--resume", out, "--lr", "0.5"]) == 2
    assert "--lr cannot change when resuming" in capsys.readouterr().err
    assert run_cli(["--resume", out, "--epochs", "2", "--no-progress"]) == 0
    assert [m["epoch"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1, 2]
    assert json.loads(open(os.path.join(out, "config.json")).read())["epochs"] == 2


def test_corrupt_checkpoint_or_missing_run_dir_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY_ARGS, "--model", "resnet18", "--epochs", "1", "--out", str(out)]) == 0
    (out / "last.pt").write_bytes(b"not a checkpoint")
    assert run_cli(["--resume", str(out), "--epochs", "2"]) == 2
    error = capsys.readouterr().err
    assert "last.pt is unreadable" in error and "Traceback" not in error
    assert run_cli(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_synthetic_data_is_learned_well_above_chance_in_two_epochs(tmp_path):
    config = cli.parse_config(["--dataset", "synthetic", "--model", "resnet18", "--base-width", "8", "--train-size",
                               "640", "--test-size", "200", "--batch-size", "32", "--epochs", "2", "--device", "cpu",
                               "--no-progress", "--out", str(tmp_path / "run")])
    metrics = Trainer(config).fit()
    assert metrics[-1]["test_acc"] > 0.5  # chance is 0.1
