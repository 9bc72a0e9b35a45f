"""Two CPU processes under torchrun (gloo): rank 0 alone writes the run dir, both ranks rewire alike."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from test_training import TINY_ARGS

from plasticnet.training.checkpoint import load_checkpoint
from plasticnet.training.run_dir import read_jsonl

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `python -m plasticnet train`, except that every rank also saves what only rank 0 may write:
# its rewire events and its final weights (rank 1 writes no run dir, so this is how it reports).
RECORDING_LAUNCHER = """
import os
import sys

import torch

from plasticnet.cli import main
from plasticnet.training.loop import Trainer

train_step, close, events = Trainer._train_step, Trainer.close, []


def recording_train_step(self, inputs, labels, totals):
    event = train_step(self, inputs, labels, totals)
    if event is not None:
        events.append(event)
    return event


def recording_close(self):
    record = {"events": events, "find_unused_parameters": self.ddp_model.find_unused_parameters,
              "parameters": {name: p.detach().clone() for name, p in self.model.named_parameters()}}
    torch.save(record, os.path.join(os.environ["RANK_RECORDS"], f"rank{self.distributed.rank}.pt"))
    close(self)


Trainer._train_step, Trainer.close = recording_train_step, recording_close
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_torchrun_two_cpu_processes_train_and_rewire_identically(tmp_path):
    out, records = tmp_path / "run", tmp_path / "records"
    records.mkdir()
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECORDING_LAUNCHER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(launcher),
        "train",
        *TINY_ARGS,
        "--model",
        "plastic-resnet18",
        "--epochs",
        "2",
        "--train-size",
        "192",
        "--out",
        str(out),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPOSITORY, "RANK_RECORDS": str(records)}
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    # one process wrote: exactly one line per epoch and per rewire, no stray files
    metrics = read_jsonl(str(out / "metrics.jsonl"))
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    config = load_checkpoint(str(out / "last.pt"))["config"]
    assert config["world_size"] == 2
    # 192 samples / 2 ranks / batch 16 = 6 steps per epoch; rewires at steps 3, 6, 9
    events = read_jsonl(str(out / "events.jsonl"))
    assert [e["step"] for e in events] == [3, 6, 9]
    assert metrics[-1]["active_paths"] == events[-1]["active_paths"]

    # both ranks made the same rewires from the same (rank-averaged) scores, hold bitwise the
    # same weights, and DDP never searched for unused parameters
    rank0, rank1 = (torch.load(records / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0["events"] == rank1["events"] == events
    assert rank0["find_unused_parameters"] is rank1["find_unused_parameters"] is False
    assert rank0["parameters"].keys() == rank1["parameters"].keys()
    for name, parameter in rank0["parameters"].items():
        torch.testing.assert_close(rank1["parameters"][name], parameter, rtol=0, atol=0, msg=name)
