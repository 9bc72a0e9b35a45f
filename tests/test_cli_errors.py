"""What a user can get wrong at the command line ends in one line on stderr and exit code 2, with
no traceback and nothing lost: run directories that belong to another run, bad paths and values,
damaged or foreign checkpoints, a diverging run, and bench's input and output files."""

import errno
import fcntl
import json
import os
import shutil
import time

import pytest
import torch
from helpers import one_line_error, plasticnet, tiny_synthetic_flags

from plasticnet.cli import main
from plasticnet.training import checkpoint
from plasticnet.training.checkpoint import load_checkpoint, save_checkpoint

TINY = tiny_synthetic_flags(
    train_size=64, test_size=32, batch_size=32, epochs=1, rewire_interval=3, progress=False, threads=1
)
PLASTIC = [*TINY, "--model", "plastic-resnet18", "--max-span", "2"]


def snapshot(run_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = plasticnet("train", *PLASTIC, "--out", run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


# ---- a run directory belongs to one run --------------------------------------------------


def test_a_fresh_run_into_a_run_dir_is_refused_and_changes_nothing(run_copy):
    before = snapshot(run_copy)
    one_line_error(plasticnet("train", *PLASTIC, "--out", run_copy), "holds a run already", "--resume", "--overwrite")
    assert snapshot(run_copy) == before


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(run_copy):
    with open(run_copy / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `plasticnet train` holds it
        before = snapshot(run_copy)
        one_line_error(plasticnet("train", "--resume", run_copy), "in use by another `plasticnet train`")
        one_line_error(plasticnet("train", *PLASTIC, "--out", run_copy, "--overwrite"), "in use")
        assert snapshot(run_copy) == before


def test_overwrite_starts_clean_and_removes_stale_temporary_files(run_copy):
    (run_copy / "metrics.jsonl").write_text('{"epoch": 7, "stale": true}\n' * 3)
    (run_copy / ".last.pt.abc123.tmp").write_bytes(b"a killed writer's")
    done = plasticnet("train", *PLASTIC, "--out", run_copy, "--overwrite")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1] and "stale" not in metrics[0]
    assert not list(run_copy.glob("*.tmp")) and not list(run_copy.glob(".*.tmp"))


def test_resume_and_overwrite_exclude_each_other(run_copy):
    one_line_error(plasticnet("train", "--resume", run_copy, "--overwrite"), "exclude each other")


# ---- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, needle",
    [
        ("resume-a-file", "is a file; give the run directory"),
        ("out-a-file", "is a file, not a directory"),
        ("out-unwritable", "cannot create the run directory"),
        ("out-too-long", "File name too long"),
    ],
)
def test_bad_paths_are_one_line(tmp_path, case, needle):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    argv = {
        "resume-a-file": ["train", "--resume", a_file],
        "out-a-file": ["train", *TINY, "--out", a_file],
        "out-unwritable": ["train", *TINY, "--out", "/proc/plasticnet-run"],  # refused even to root
        "out-too-long": ["train", *TINY, "--out", tmp_path / ("x" * 300)],
    }[case]
    one_line_error(plasticnet(*argv), needle)
    assert a_file.read_text() == "mine"


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(finished_run, tmp_path, monkeypatch, capsys):
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    last = (run_dir / "last.pt").read_bytes()

    def no_space(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "atomic_write", no_space)
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "--resume continues" in error and error.count("\n") == 1
    assert (run_dir / "last.pt").read_bytes() == last


# ---- bad values, refused before anything is written ---------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--label-smoothing", "2"], "--label-smoothing: expected a finite number in [0, 1)"),
        (["--device", "mps"], "--device: expected auto, cpu, cuda or cuda:N"),
        (["--device", "meta"], "--device: expected auto, cpu, cuda or cuda:N"),
        (["--warmup-epochs", "nan"], "--warmup-epochs: expected a finite number >= 0"),
        (["--lr", "nan"], "--lr: expected a finite number > 0"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--seed", str(2**70)], "--seed: expected an integer in [0, 2**63 - 1)"),
        (["--train-size", "100000000"], "synthetic images need"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("-") else None,
)
def test_bad_values_are_refused_before_anything_is_written(tmp_path, flags, needle):
    one_line_error(plasticnet("train", *TINY, *flags, "--out", tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_one_line_and_writes_no_damaged_checkpoint(tmp_path):
    for model in ("resnet18", "plastic-resnet18"):
        out = tmp_path / model
        flags = [
            "--model",
            model,
            "--lr",
            "1e6",
            "--warmup-epochs",
            "0",
            "--train-size",
            "128",
            "--rewire-interval",
            "3",
        ]
        one_line_error(plasticnet("train", *TINY, *flags, "--out", out), "non-finite", "--lr")
        assert not (out / "last.pt").exists()


def test_metrics_are_strict_json(finished_run):
    def refuse(constant):
        raise AssertionError(f"{constant} in metrics.jsonl")

    for line in (finished_run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


# ---- checkpoints ----------------------------------------------------------------------------


def test_a_bit_flip_in_tensor_data_is_caught_and_best_pt_offered(run_copy):
    path = run_copy / "last.pt"
    weight = load_checkpoint(str(path))["model"]["stem.conv1.weight"]
    raw = bytearray(path.read_bytes())
    at = raw.find(weight.numpy().tobytes())  # the tensor's bytes, stored uncompressed in the zip
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    assert not torch.equal(
        torch.load(path, weights_only=True)["model"]["stem.conv1.weight"], weight
    )  # torch.load passes
    one_line_error(plasticnet("train", "--resume", run_copy, "--epochs", "2"), "last.pt is damaged", "best.pt")


def test_a_checkpoint_of_another_width_or_missing_a_key_is_one_line(run_copy, tmp_path):
    other = tmp_path / "wide"
    assert plasticnet("train", *PLASTIC, "--base-width", "8", "--out", other).returncode == 0
    shutil.copy(other / "last.pt", run_copy / "last.pt")
    one_line_error(plasticnet("train", "--resume", run_copy, "--epochs", "2"), "does not fit", "size mismatch")

    state = load_checkpoint(str(other / "last.pt"))
    del state["optimizer"]
    save_checkpoint(str(run_copy / "last.pt"), state)
    one_line_error(plasticnet("train", "--resume", run_copy, "--epochs", "2"), "lacks ['optimizer']")


def test_a_config_missing_a_key_that_the_checkpoint_needs_is_one_line(run_copy):
    saved = json.loads((run_copy / "config.json").read_text())
    # a key an older plasticnet did not write is filled with its default: here not the run's value
    (run_copy / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "max_span"}))
    one_line_error(plasticnet("train", "--resume", run_copy, "--epochs", "2"), "does not fit")
    (run_copy / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "base_width"}))
    one_line_error(plasticnet("train", "--resume", run_copy, "--epochs", "2"), "lacks ['base_width']")
    (run_copy / "config.json").write_text("[1, 2]")
    one_line_error(plasticnet("train", "--resume", run_copy, "--epochs", "2"), "not a run's options")


# ---- bench's files --------------------------------------------------------------------------


def test_bench_show_of_a_missing_or_foreign_file_is_one_line(tmp_path):
    one_line_error(plasticnet("bench", "--show", tmp_path / "missing.json"), "cannot read it")
    (tmp_path / "foreign.json").write_text('{"rows": []}')
    one_line_error(
        plasticnet("bench", "--show", tmp_path / "foreign.json"), "is not a `plasticnet bench --json` report"
    )


def test_bench_json_to_an_unwritable_path_fails_before_benchmarking():
    start = time.perf_counter()
    done = plasticnet("bench", "--quick", "--json", "/proc/plasticnet-bench.json")
    one_line_error(done, "cannot write into /proc")
    assert "copy bandwidth" not in done.stdout and time.perf_counter() - start < 60
