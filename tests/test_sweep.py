"""`plasticnet sweep`: the grid, ROOT ownership, skip / resume / restart, failing runs; and a real
sweep killed midway (with its training child) that resumes to the report of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import tiny_synthetic_flags

from plasticnet.cli import main as plasticnet_main
from plasticnet.training import sweep
from plasticnet.training.sweep import SweepSpec

# A few seconds per run on one CPU core, most of it the child's interpreter start-up.
TINY_TRAIN = tiny_synthetic_flags(train_size=128, test_size=64, epochs=2, batch_size=32, rewire_interval=2)
MODELS = "resnet18,plastic-resnet18"
RUN_NAMES = ["resnet18-s0", "resnet18-s1", "plastic-resnet18-s0", "plastic-resnet18-s1"]  # the order they run in


def sweep_argv(root, *, seeds="0,1", train=TINY_TRAIN) -> list[str]:
    return ["sweep", str(root), "--models", MODELS, "--seeds", seeds, "--train", *train]


def one_line_error(capsys, argv) -> str:
    assert plasticnet_main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("plasticnet sweep: error: "), error
    return error


def test_grid_names_one_run_dir_per_model_budget_and_seed():
    spec = SweepSpec(models=["resnet18", "plastic-resnet18"], budgets=[8, 4], seeds=[0, 1], train_args=[])
    assert [run.name for run in spec.runs()] == [
        f"{model}-b{budget}-s{seed}"
        for model in ("resnet18", "plastic-resnet18")
        for budget in (8, 4)
        for seed in (0, 1)
    ]
    default_budget = SweepSpec(models=["resnet18"], budgets=None, seeds=[3], train_args=[]).runs()
    assert [(run.name, run.budget) for run in default_budget] == [("resnet18-s3", None)]


def test_bad_sweep_arguments_are_refused_before_anything_runs(tmp_path, capsys):
    root = tmp_path / "root"
    assert "--model cannot be given" in one_line_error(capsys, sweep_argv(root, train=["--model", "resnet34"]))
    assert "--out, --seed cannot be given" in one_line_error(
        capsys, sweep_argv(root, train=["--seed", "1", "--out", "x"])
    )
    assert "unrecognized arguments: --bogus" in one_line_error(capsys, sweep_argv(root, train=["--bogus"]))
    assert not root.exists()
    for flag, value in (("--models", "resnet18,resnet99"), ("--seeds", "0,0"), ("--budgets", "8,0")):
        with pytest.raises(SystemExit) as exit_info:
            plasticnet_main(["sweep", str(root), flag, value])
        assert exit_info.value.code == 2
        assert value in capsys.readouterr().err


def test_a_root_belongs_to_one_sweep(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    spec = SweepSpec(models=MODELS.split(","), budgets=None, seeds=[0, 1], train_args=TINY_TRAIN)
    (root / "sweep.json").write_text(json.dumps(spec.to_json()))
    error = one_line_error(capsys, sweep_argv(root, seeds="0,1,2"))
    assert f"{root} belongs to another sweep (seeds [0, 1] there, [0, 1, 2] now)" in error
    error = one_line_error(capsys, sweep_argv(root, train=[*TINY_TRAIN, "--lr", "0.2"]))
    assert "belongs to another sweep (train_args" in error
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a sweep")
    assert "is not empty and has no sweep.json" in one_line_error(capsys, sweep_argv(other))
    assert os.listdir(other) == ["notes.txt"]


class FakeTrain:
    """Stands in for the `plasticnet train` subprocess: records each command and leaves the run
    directory finished (config.json, last.pt, one metrics line per epoch)."""

    def __init__(self, epochs: int = 2):
        self.epochs = epochs
        self.commands = []

    def __call__(self, command, **kwargs):
        self.commands.append(command[command.index("train") + 1 :])
        run_dir = command[command.index("--resume" if "--resume" in command else "--out") + 1]
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({"epochs": self.epochs, "base_width": 4, "out": run_dir, "versions": {}}, f)
        open(os.path.join(run_dir, "last.pt"), "w").close()
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps({"epoch": epoch}) + "\n" for epoch in range(1, self.epochs + 1))
        return subprocess.CompletedProcess(command, 0)


def test_finished_runs_are_skipped_interrupted_resumed_and_early_deaths_restarted(tmp_path, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr(sweep.subprocess, "run", fake)
    root = tmp_path / "root"
    argv = ["sweep", str(root), "--models", "resnet18,plastic-resnet18", "--budgets", "4", "--seeds", "0"]
    assert plasticnet_main([*argv, "--train", "--epochs", "2"]) == 0
    assert fake.commands == [
        ["--epochs", "2", "--model", model, "--budget", "4", "--seed", "0", "--out", str(root / f"{model}-b4-s0")]
        + ["--no-progress"]
        for model in ("resnet18", "plastic-resnet18")
    ]
    assert "2 runs in" in capsys.readouterr().out
    interrupted, died = root / "resnet18-b4-s0", root / "plastic-resnet18-b4-s0"
    (interrupted / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    (died / "last.pt").unlink()
    (died / "events.jsonl").write_text("a rewire before the first checkpoint\n")
    (died / "train.log").write_text("the attempt that died\n")
    fake.commands.clear()
    assert plasticnet_main([*argv, "--train", "--epochs", "2"]) == 0
    assert fake.commands == [
        ["--resume", str(interrupted), "--no-progress"],
        ["--epochs", "2", "--model", "plastic-resnet18", "--budget", "4", "--seed", "0", "--out", str(died)]
        + ["--no-progress"],
    ]
    assert sorted(os.listdir(died)) == ["config.json", "last.pt", "metrics.jsonl", "train.log"]
    assert (died / "train.log").read_text().startswith("the attempt that died\n==== ")
    out = capsys.readouterr().out
    assert f"[1/2] {interrupted}: resuming from last.pt\n" in out
    assert f"[2/2] {died}: training afresh" in out
    assert out.endswith("1 trained (1 of them restarted), 1 resumed, 0 skipped (already finished)\n")
    fake.commands.clear()
    assert plasticnet_main([*argv, "--train", "--epochs", "2"]) == 0
    assert fake.commands == []
    assert capsys.readouterr().out.endswith(
        "0 trained (0 of them restarted), 0 resumed, 2 skipped (already finished)\n"
    )


def test_a_failing_run_stops_the_sweep_naming_its_run_dir_and_log(tmp_path, capsys):
    train = [*TINY_TRAIN, "--batch-size", "1000"]  # more than the 128 training samples
    error = one_line_error(capsys, ["sweep", str(tmp_path), "--models", "resnet18", "--seeds", "0", "--train", *train])
    run_dir = tmp_path / "resnet18-s0"
    assert f"run {run_dir} failed (exit 2: plasticnet train: error: --batch-size" in error
    assert f"log: {run_dir / 'train.log'}" in error
    assert "--batch-size" in (run_dir / "train.log").read_text()


def without_timing(value):
    """report.json without the wall-clock throughput, which differs between any two runs, and
    without where the runs are (the two sweeps have their own ROOTs)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in ("images_per_s", "roots", "root")}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return os.path.basename(value) if isinstance(value, str) and os.path.isabs(value) else value


def living_processes_in_group(group: int) -> list[int]:
    """PIDs of the processes of a process group that are not zombies (Linux /proc)."""
    living = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (command name)"
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            living.append(int(pid))
    return living


def metrics_lines(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_after_first_epoch(root) -> None:
    """Start the sweep as a process group and SIGKILL the group once its first run has
    checkpointed epoch 1 of 2 (mid-run), then wait until no process of the group is alive."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "plasticnet", *sweep_argv(root)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    first = root / RUN_NAMES[0]
    deadline = time.monotonic() + 60
    while metrics_lines(first) < 1:
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "the first run did not finish an epoch in 60 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while living_processes_in_group(process.pid):
        assert time.monotonic() < deadline, "the training child survived its sweep's process group"
        time.sleep(0.05)


@pytest.mark.slow  # 8 training subprocesses of a few seconds each, about 40 s on one core
def test_a_killed_sweep_continues_to_the_report_of_an_uninterrupted_one(tmp_path, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert plasticnet_main(sweep_argv(whole)) == 0
    assert capsys.readouterr().out.endswith(
        "4 runs in " + str(whole) + ": 4 trained (0 of them restarted), 0 resumed, 0 skipped (already finished)\n"
    )
    assert sorted(os.listdir(whole)) == sorted([*RUN_NAMES, "sweep.json"])
    assert plasticnet_main(["report", str(whole)]) == 0

    kill_after_first_epoch(killed)
    first = killed / RUN_NAMES[0]
    assert (first / "last.pt").exists() and metrics_lines(first) == 1  # killed mid-run
    assert not (killed / RUN_NAMES[1] / "last.pt").exists()
    # a run dir of a sweep killed before its first checkpoint: started afresh, its log kept
    died = killed / RUN_NAMES[1]
    died.mkdir(exist_ok=True)
    (died / "events.jsonl").write_text("{}\n")
    (died / "train.log").write_text("the attempt that died\n")
    assert plasticnet_main(sweep_argv(killed)) == 0
    assert capsys.readouterr().out.endswith(
        "3 trained (1 of them restarted), 1 resumed, 0 skipped (already finished)\n"
    )
    assert (died / "train.log").read_text().startswith("the attempt that died\n")
    assert plasticnet_main(["report", str(killed)]) == 0

    reports = [json.loads((root / "report.json").read_text()) for root in (whole, killed)]
    assert [r["name"] for r in reports[1]["runs"]] == sorted(RUN_NAMES)
    assert without_timing(reports[1]) == without_timing(reports[0])
    assert reports[0]["paired_differences"][0]["seeds"] == [0, 1]
