"""Two CPU processes under torchrun (gloo): rank 0 alone writes the run dir, both ranks rewire alike."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from plasticnet.training.checkpoint import load_checkpoint
from plasticnet.training.run_dir import read_jsonl
from test_training import TINY_ARGS

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_torchrun_two_cpu_processes_train_and_rewire_identically(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "plasticnet", "train", *TINY_ARGS, "--model", "plastic-resnet18", "--epochs", "2",
               "--train-size", "192", "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPOSITORY}
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
    # the controller all-gathers every rank's active paths before and after each rewire and
    # raises on a mismatch, so the clean exit above means both ranks rewired identically
    assert metrics[-1]["active_paths"] == events[-1]["active_paths"]
