"""`plasticnet bench` end to end on tiny sizes, and the pieces its numbers rest on."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from plasticnet.bench.ops import OpCase, OpWorkload, check_backends, rotation_sets
from plasticnet.bench.overhead import OverheadWorkload
from plasticnet.bench.report import op_target, train_step_target
from plasticnet.bench.settings import PRESETS, BenchSettings
from plasticnet.bench.timing import Timing, measure
from plasticnet.cli import main
from plasticnet.ops import residual_aggregate

RESULT_KEYS = {
    "backend",
    "K",
    "numel",
    "shape",
    "dtype",
    "fwd_ms",
    "fwd_p20_ms",
    "fwd_p80_ms",
    "bwd_ms",
    "fwd_bwd_ms",
    "fwd_bwd_p20_ms",
    "fwd_bwd_p80_ms",
    "gbps",
    "fwd_gbps",
    "copy_gbps",
    "pct_copy",
    "speedup_vs_eager",
    "speedup_vs_compile",
    "target",
}
TRAIN_KEYS = {"model", "mode", "base_width", "batch", "backend", "step_ms", "images_per_s", "vs_static", "target"}


def test_quick_bench_writes_the_documented_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = main(
        [
            "bench",
            "--device",
            "cpu",
            "--quick",
            "--batch",
            "2",
            "--ks",
            "2",
            "--dtypes",
            "float32",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--train-batch",
            "2",
            "--train-width",
            "4",
            "--no-progress",
            "--json",
            str(path),
        ]
    )
    assert status == 0
    report = json.loads(path.read_text())
    assert {"device", "date", "versions", "threads", "copy_gbps", "results", "train_step"} <= report.keys()
    assert set(report["versions"]) == {"torch", "triton", "python", "plasticnet", "cuda"}
    assert (report["settings"]["stages"], report["settings"]["ks"], report["settings"]["dtypes"]) == (
        1,
        [2],
        ["float32"],
    )
    backends = {row["backend"] for row in report["results"]}
    assert {"eager", "compile"} <= backends and "reference" not in backends
    assert {(row["K"], row["backend"]) for row in report["results"]} == {(k, b) for k in (2,) for b in backends}
    for row in report["results"]:
        assert RESULT_KEYS <= row.keys()
        assert row["shape"] == [2, 64, 32, 32] and row["numel"] == 2 * 64 * 32 * 32
        assert 0 < row["fwd_p20_ms"] <= row["fwd_ms"] <= row["fwd_p80_ms"]
        assert row["gbps"] > 0 and row["pct_copy"] > 0
    eager = next(row for row in report["results"] if row["backend"] == "eager")
    assert eager["speedup_vs_eager"] == 1.0
    assert {(row["model"], row["mode"]) for row in report["train_step"]} == {("static", "eager"), ("plastic", "eager")}
    for row in report["train_step"]:
        assert TRAIN_KEYS <= row.keys() and row["images_per_s"] > 0
    printed = capsys.readouterr().out
    assert "vs compile" in printed and "images/s" in printed and str(path) in printed
    assert main(["bench", "--show", str(path), "--markdown"]) == 0
    shown = capsys.readouterr().out
    assert "| backend | K | shape |" in shown and shown.count("| eager | 2 | 2x64x32x32 | float32 |") == 1


def test_overhead_case_reports_ratios_against_its_targets(tmp_path, capsys):
    path = tmp_path / "overhead.json"
    argv = ["bench", "--case", "overhead", "--device", "cpu", "--quick", "--ks", "1", "2", "--repeats", "3"]
    assert main([*argv, "--warmup", "0", "--no-progress", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["case"] == "overhead" and report["settings"]["samples"] == 3
    assert [(row["backend"], row["K"]) for row in report["overhead"]] == [("cpu", 1), ("cpu", 2)]
    for row in report["overhead"]:
        assert row["shape"] == [2, 64, 4, 4]
        for which in ("no_grad_fwd", "fwd_bwd"):
            fused, eager = row[f"{which}_fused_us"], row[f"{which}_eager_us"]
            assert 0 < row[f"{which}_fused_p20_us"] <= fused <= row[f"{which}_fused_p80_us"]
            assert row[f"{which}_ratio"] == pytest.approx(fused / eager)
        for bound in ("floor", "native") if row["K"] == 1 else ("floor",):
            assert row[f"fwd_bwd_{bound}_ratio"] == pytest.approx(row[f"fwd_bwd_{bound}_us"] / row["fwd_bwd_eager_us"])
        assert ("fwd_bwd_native_us" in row) == (row["K"] == 1)  # no single native op joins two branches
        assert row["target"] in ("PASS", "MISS")
    printed = capsys.readouterr().out
    assert "engine floor" in printed and "native 1-op" in printed and "fwd+bwd fused" in printed
    assert "forward+backward <= 0.5x" in printed
    assert main(["bench", "--show", str(path), "--markdown"]) == 0
    assert capsys.readouterr().out.count("| cpu | 2 |") == 1


def test_inference_case_times_the_plastic_model_its_exports_and_the_static_twin(tmp_path, capsys):
    path = tmp_path / "inference.json"
    argv = ["bench", "--case", "inference", "--device", "cpu", "--quick", "--train-batch", "4", "--repeats", "3"]
    assert main([*argv, "--train-width", "4", "--warmup", "0", "--no-progress", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["case"] == "inference" and report["settings"] == {"batch": 4, "width": 4, "warmup": 0, "samples": 3}
    rows = {row["model"]: row for row in report["inference"]}
    assert list(rows) == ["plastic", "export, fused join", "export, reference join", "static resnet18"]
    assert {row["active_paths"] for row in rows.values()} == {8}  # equal active paths
    plastic = rows["plastic"]
    for name in ("export, fused join", "export, reference join"):
        assert rows[name]["macs"] == plastic["macs"] and rows[name]["parameters"] == plastic["parameters"] - 8  # gates
        assert rows[name]["vs_plastic"] == pytest.approx(rows[name]["images_per_s"] / plastic["images_per_s"])
        assert rows[name]["target"] == ("PASS" if rows[name]["vs_plastic"] >= 1 else "MISS")
    assert rows["static resnet18"]["target"] is None
    for row in rows.values():
        assert 0 < row["batch_p20_ms"] <= row["batch_ms"] <= row["batch_p80_ms"]
        assert row["images_per_s"] == pytest.approx(4 / (row["batch_ms"] / 1e3))
    assert "vs plastic" in capsys.readouterr().out
    assert main(["bench", "--show", str(path), "--markdown"]) == 0
    assert capsys.readouterr().out.count("| export, fused join | 8 |") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "--batch: expected >= 1, got 0"),
        (["--case", "inference", "--train-batch", "0"], "--train-batch, --train-width, --repeats: expected >= 1"),
        (["--ks", "0"], "--ks: expected branch counts >= 1"),
        (["--backends", "cuda"], "'cuda' is unavailable on cpu"),
        (["--case", "overhead", "--backends", "eager"], "--backends: the overhead case needs a fused backend"),
    ],
)
def test_bad_options_exit_with_a_message(argv, message, capsys):
    assert main(["bench", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train_repeats": 0}, "--train-repeats: expected >= 1, got 0"),
        ({"warmup": -1}, "--warmup: expected >= 0, got -1"),
        ({"stages": 5}, "--stages: expected 1 to 4, got 5"),
        ({"ks": ()}, "--ks: expected branch counts >= 1, got []"),
        ({"train_modes": ("jit",)}, "--train-modes: expected names from ['eager', 'compile'], got ['jit']"),
        ({"dtypes": ("float64",)}, "--dtypes: expected names from"),
    ],
)
def test_settings_reject_values_out_of_range(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(PRESETS[("cpu", True)], **override)


def test_settings_fill_in_the_device_backends_only_when_none_are_named():
    cpu = torch.device("cpu")
    quick = PRESETS[("cpu", True)]
    assert quick.backends == () and quick.resolved(cpu).backends[-2:] == ("eager", "compile")
    assert dataclasses.replace(quick, backends=("eager",)).resolved(cpu).backends == ("eager",)


def _committed_op_reports() -> list[Path]:
    """The committed reports of the ops case, whose settings are BenchSettings (older ones name no case)."""
    paths = sorted(Path(__file__).parents[1].glob("benchmarks/results/*.json"))
    return [p for p in paths if json.loads(p.read_text()).get("case", "ops") == "ops"]


@pytest.mark.parametrize("path", _committed_op_reports(), ids=lambda p: p.name)
def test_committed_results_round_trip_through_settings(path):
    recorded = json.loads(path.read_text())["settings"]
    settings = BenchSettings(**{name: tuple(v) if isinstance(v, list) else v for name, v in recorded.items()})
    assert list(settings.to_json().items()) == list(recorded.items())


def test_check_backends_rejects_unknown_names():
    with pytest.raises(ValueError, match="backends: expected names from .* got 'reference'"):
        check_backends(["reference"], torch.device("cpu"))


def test_timing_percentiles():
    timing = Timing.from_samples([float(v) for v in (7, 1, 3, 9, 5)])
    assert (timing.median_ms, timing.p20_ms, timing.p80_ms) == (5.0, 2.6, 7.4)


def test_measure_excludes_warmup_and_setup():
    calls = []
    timing = measure(calls.append, device=torch.device("cpu"), warmup=2, repeats=3, setup=lambda i: calls.append(-i))
    assert calls == [0, 0, -1, 1, -2, 2, -3, 3, -4, 4]
    assert timing.p20_ms <= timing.median_ms <= timing.p80_ms


def test_bytes_follow_the_design():
    # docs/design.md section 2, for K=3, N=10, bf16: forward reads 4N writes N; backward reads 5N writes 4N.
    case = OpCase(3, (2, 5), torch.bfloat16, torch.device("cpu"))
    assert [case.pass_bytes(p) for p in ("fwd", "bwd", "fwd_bwd")] == [5 * 10 * 2, 9 * 10 * 2, 14 * 10 * 2]


@pytest.mark.parametrize("set_bytes, cache_bytes, expected", [(10, 1000, 64), (400, 1000, 5), (10**6, 1000, 2)])
def test_rotation_exceeds_twice_the_cache_within_limits(set_bytes, cache_bytes, expected):
    assert rotation_sets(set_bytes, cache_bytes) == expected


def test_backward_step_consumes_a_fresh_graph():
    workload = OpWorkload(OpCase(2, (3, 5, 7), torch.float32, torch.device("cpu")), "eager", cache_bytes=1)
    step, setup = workload.timed_pass("bwd")
    with pytest.raises(RuntimeError, match="keep_graph"):
        step(0)
    setup(1)
    step(1)
    with pytest.raises(RuntimeError, match="keep_graph"):
        step(2)


def test_targets():
    fused = {"backend": "cpu", "speedup_vs_eager": 1.6, "speedup_vs_compile": 0.99, "pct_copy": 90, "fwd_pct_copy": 86}
    assert op_target(fused, "cpu") == "MISS"
    assert op_target({**fused, "speedup_vs_compile": 1.0}, "cpu") == "PASS"
    assert op_target({**fused, "backend": "triton"}, "cuda") == "PASS"
    assert op_target({**fused, "backend": "triton", "fwd_pct_copy": 80}, "cuda") == "MISS"
    assert op_target({**fused, "backend": "eager"}, "cpu") is None
    assert op_target({**fused, "speedup_vs_compile": None}, "cpu") is None
    assert train_step_target({"model": "plastic", "vs_static": 0.92}) == "PASS"
    assert train_step_target({"model": "plastic", "vs_static": 0.90}) == "MISS"
    assert train_step_target({"model": "static", "vs_static": 1.0}) is None


def test_native_join_is_the_same_join_as_the_fused_one_at_k1():
    # With the mask at 1 and no relu, addcmul's forward+backward is the fused op's: the bound times
    # the same work, not a cheaper stand-in. Two branches have no single native op.
    workload = OverheadWorkload(1, "eager", torch.device("cpu"))
    fused = residual_aggregate(workload.x, workload.branches, workload.gates, workload.mask, activation="none")
    native = torch.addcmul(workload.x, workload.branches[0], workload.gates)
    torch.testing.assert_close(native, fused)
    workload.native_join()
    with pytest.raises(ValueError, match="native_join: a join of one branch, got 2"):
        OverheadWorkload(2, "eager", torch.device("cpu")).native_join()
