"""Crash-exact resume: a real `plasticnet train` is SIGKILLed at many points (while each
checkpoint's temporary file is half-written or complete, right after each rename, before the first
checkpoint, at random times), then continued; the result must equal the uninterrupted run's
metrics (without timing), events, best.pt and final weights, bit for bit, at the same thread count."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import tiny_synthetic_flags

from plasticnet.training.checkpoint import load_checkpoint

TRAIN = [
    "train",
    *tiny_synthetic_flags(
        model="plastic-resnet18",
        train_size=96,
        val_size=32,
        test_size=32,
        batch_size=16,
        epochs=3,
        rewire_interval=4,
        rewire_end=1.0,
        threads=1,
        progress=False,
    ),
]

# The child kills itself at KILL_AT=WHERE:FILE:NTH, the NTH write of FILE in the run directory:
# "during" with half of the temporary file written, "before" with all of it written but not yet
# renamed, "after" right after the rename.
KILLING_CHILD = """
import os, signal, sys
import plasticnet.training.checkpoint as checkpoint
from plasticnet.cli import main

where, name, nth = os.environ["KILL_AT"].split(":")
writes = 0
rename, atomic_write = os.replace, checkpoint.atomic_write

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def is_target(path):
    return os.path.basename(path) == name and writes == int(nth)

def replace(source, target):
    if is_target(target) and where == "before":
        die()
    rename(source, target)
    if is_target(target) and where == "after":
        die()

def write_atomically(path, write):
    global writes
    writes += os.path.basename(path) == name
    if is_target(path) and where == "during":
        return atomic_write(path, lambda f: (f.write(b"half a checkpoint"), f.flush(), die()))
    return atomic_write(path, write)

def counting_write(path, write):  # config.json and the logs go through run_dir's own import
    global writes
    writes += os.path.basename(path) == name
    return run_dir_write(path, write)

import plasticnet.training.run_dir as run_dir
run_dir_write = run_dir.atomic_write
os.replace, checkpoint.atomic_write, run_dir.atomic_write = replace, write_atomically, counting_write
sys.exit(main(sys.argv[1:]))
"""

KILL_POINTS = [
    "before:config.json:1",  # before the run has any file: the next start is a fresh one
    "after:config.json:1",  # a run dir without a checkpoint: --resume starts from scratch
    "during:last.pt:1",
    "before:last.pt:1",
    "after:last.pt:1",  # before best.pt and the metrics line of epoch 1
    "before:best.pt:1",
    "after:best.pt:1",
    "during:last.pt:2",
    "after:last.pt:2",
    "random:0",
    "random:1",
    "random:2",
]


def start(argv: list[str], kill_at: str | None = None) -> subprocess.Popen:
    """`plasticnet ARGV` in a child; with `kill_at`, one that kills itself there (KILLING_CHILD)."""
    entry = ["-m", "plasticnet"] if kill_at is None else ["-c", KILLING_CHILD]
    return subprocess.Popen(
        [sys.executable, *entry, *argv],
        env={**os.environ, "KILL_AT": kill_at or ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def outcome(run_dir) -> dict:
    """Everything a run leaves that must not depend on interruptions."""

    def lines(name):
        with open(os.path.join(run_dir, name)) as f:
            return [json.loads(line) for line in f]

    last, best = (load_checkpoint(os.path.join(run_dir, name)) for name in ("last.pt", "best.pt"))
    return {
        "metrics": [{k: v for k, v in m.items() if k != "images_per_s"} for m in lines("metrics.jsonl")],
        "events": lines("events.jsonl"),
        "weights": last["model"],
        "best": (best["epoch"], best["model"]),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start([*TRAIN, "--out", str(out)]))
    return outcome(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, kill_at):
    out = tmp_path / "run"
    fresh = [*TRAIN, "--out", str(out)]
    if kill_at.startswith("random"):
        process = start(fresh)
        time.sleep(random.Random(kill_at).uniform(2.0, 9.0))  # from interpreter start-up to the last epoch
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    else:
        process = start(fresh, kill_at)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, output[-3000:]
    # the command a user gives next: --resume once the run has its config.json, else the same again
    finish(start(["train", "--resume", str(out), "--no-progress"] if (out / "config.json").exists() else fresh))

    resumed = outcome(out)
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["events"] == uninterrupted["events"]
    assert resumed["best"][0] == uninterrupted["best"][0]
    for saved, expected in (
        (resumed["weights"], uninterrupted["weights"]),
        (resumed["best"][1], uninterrupted["best"][1]),
    ):
        assert saved.keys() == expected.keys()
        assert all(torch.equal(saved[key], tensor) for key, tensor in expected.items())
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
