"""Checkpoints: atomic writes, weights_only loads, clear errors (plasticnet.training.checkpoint)."""

import os

import pytest
import torch

from plasticnet.training.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)


def test_round_trip_loads_with_weights_only(tmp_path):
    path = str(tmp_path / "last.pt")
    model = torch.nn.Linear(3, 2)
    generator = torch.Generator().manual_seed(7)
    save_checkpoint(
        path,
        {"model": model.state_dict(), "epoch": 3, "paths": [(0, 1), (1, 2)], "rng": rng_states({"shuffle": generator})},
    )
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and state["paths"] == [(0, 1), (1, 2)]
    torch.testing.assert_close(state["model"]["weight"], model.weight.detach())
    expected = torch.rand(4, generator=generator)
    restore_rng_states(state["rng"], {"shuffle": generator})
    torch.testing.assert_close(torch.rand(4, generator=generator), expected)


def test_atomic_write_gives_the_file_the_permissions_open_would(tmp_path):
    atomic_write(str(tmp_path / "atomic"), lambda file: file.write(b"x"))
    (tmp_path / "plain").write_bytes(b"x")
    assert os.stat(tmp_path / "atomic").st_mode == os.stat(tmp_path / "plain").st_mode


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"epoch": 1})

    def crash(file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_missing_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(str(tmp_path / "absent.pt"))
    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(str(corrupt), {"epoch": 1})
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable.*zip archive"):
        load_checkpoint(str(corrupt))
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"unreadable.*\(UnpicklingError: Unsupported operand \d+\)$"):
        load_checkpoint(str(corrupt))  # the cause, not torch's advice to load unsafely
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not written by `plasticnet train`"):
        load_checkpoint(str(foreign))


class Payload:
    """An arbitrary class: unpickling it could run code, so weights_only loading refuses it."""


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": "plasticnet-train-checkpoint", "version": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"unreadable.*Unsupported global: GLOBAL \S*Payload") as info:
        load_checkpoint(str(path))
    assert "weights_only` set to `False`" not in str(info.value)  # torch's advice to load it unsafely
