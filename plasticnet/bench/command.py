"""`plasticnet bench`: the residual_aggregate micro-benchmarks and the training-step benchmark
(`--case ops`, the default), the per-call host overhead (`--case overhead`) or a found network's
inference speed (`--case inference`), printed as tables (with a PASS/MISS column per target) and
optionally written as JSON."""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch

from plasticnet.bench.environment import describe, last_level_cache_bytes, load_average
from plasticnet.bench.inference import (
    INFERENCE_PRESETS,
    INFERENCE_TARGET,
    inference_table,
    run_inference_benchmarks,
)
from plasticnet.bench.ops import BASELINES, BENCH_BACKENDS, DEFAULT_DTYPES, DTYPES, run_op_benchmarks
from plasticnet.bench.overhead import OVERHEAD_KS, OVERHEAD_TARGET, run_overhead_benchmarks
from plasticnet.bench.report import TARGETS, op_table, op_target, overhead_table, train_step_table, train_step_target
from plasticnet.bench.settings import OVERHEAD_PRESETS, PRESETS, BenchSettings
from plasticnet.bench.train_step import MODES, run_train_step_benchmarks
from plasticnet.training.checkpoint import atomic_write

# The options that override the preset's field of the same name.
_OVERRIDES = ("batch", "ks", "warmup", "repeats", "train_batch", "train_width", "train_modes", "dtypes", "backends")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--case",
        choices=tuple(CASES),
        default="ops",
        help="what to time: " + "; ".join(f"{name}: {case.help}" for name, case in CASES.items()),
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device to benchmark (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one activation shape, K 1 and 4, few repeats, "
        "eager training step only (a smoke run: about a minute on 2 CPU cores)",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--show",
        metavar="PATH",
        default=None,
        help="print the tables of a JSON written by --json instead of benchmarking",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BENCH_BACKENDS,
        default=None,
        help="residual_aggregate backends to time (default: the fused ones native to the device, "
        "eager and compile; speedups need eager and compile)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch of the ResNet-18 activation shapes")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="numbers of branches K")
    parser.add_argument(
        "--dtypes", nargs="+", choices=tuple(DTYPES), default=None, help=f"default: {' '.join(DEFAULT_DTYPES)}"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before each measurement")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
    parser.add_argument(
        "--train-step",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the plastic vs static ResNet-18 training step",
    )
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--train-width", type=int, default=None, help="base width of both ResNet-18s")
    parser.add_argument("--train-modes", nargs="+", choices=MODES, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def _settings(args: argparse.Namespace, device: torch.device) -> BenchSettings:
    """The preset for the device, overridden by every option given."""
    given = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None}
    # nargs="+" options arrive as lists; the settings hold tuples.
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
    return dataclasses.replace(PRESETS[(device.type, args.quick)], **given).resolved(device)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: got 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def benchmark(device: torch.device, settings: BenchSettings, *, train_step: bool, quick: bool, progress: bool) -> dict:
    """Run the op and training-step cases `settings` describe; returns the JSON document."""
    settings = settings.resolved(device)
    report = describe(device)
    cache_bytes = last_level_cache_bytes(device)
    cases = settings.op_cases(device)
    rows, copy_gbps = run_op_benchmarks(
        device,
        settings.backends,
        cases,
        cache_bytes=cache_bytes,
        warmup=settings.warmup,
        repeats=settings.repeats,
        progress=progress,
    )
    for row in rows:
        row["target"] = op_target(row, device.type)
    train_rows = []
    if train_step:
        train_rows = run_train_step_benchmarks(
            device,
            batch=settings.train_batch,
            base_width=settings.train_width,
            modes=settings.train_modes,
            warmup=settings.warmup,
            repeats=settings.train_repeats,
            progress=progress,
        )
        for row in train_rows:
            row["target"] = train_step_target(row)
    largest = max(cases, key=lambda case: case.numel * case.dtype.itemsize)
    report.update(
        {
            "case": "ops",
            "load_after": load_average(),
            "cache_bytes": cache_bytes,
            "quick": quick,
            "settings": settings.to_json(),
            "copy_gbps": copy_gbps[largest.size_key],
            "copy_gbps_by_size": copy_gbps,
            "targets": TARGETS,
            "results": rows,
            "train_step": train_rows,
        }
    )
    return report


def _run_ops(args: argparse.Namespace, device: torch.device, settings: BenchSettings) -> dict:
    return benchmark(device, settings, train_step=args.train_step, quick=args.quick, progress=args.progress)


def _overhead_settings(args: argparse.Namespace, device: torch.device) -> dict:
    """The overhead case's options: --ks, --warmup, --repeats (samples) and --backends (fused ones)."""
    preset = OVERHEAD_PRESETS[(device.type, args.quick)]
    backends = [b for b in _settings(args, device).backends if b not in BASELINES]
    if not backends:
        raise ValueError(f"--backends: the overhead case needs a fused backend, got {args.backends}")
    return {
        "ks": list(args.ks or OVERHEAD_KS),
        "backends": backends,
        "calls": preset["calls"],
        "warmup": preset["warmup"] if args.warmup is None else args.warmup,
        "samples": preset["samples"] if args.repeats is None else args.repeats,
    }


def _case_report(report: dict, case: str, target: str, args: argparse.Namespace, settings: dict, rows: list) -> dict:
    """The JSON document of a case whose rows sit under its own name beside its settings and target."""
    report.update(
        {
            "case": case,
            "load_after": load_average(),
            "quick": args.quick,
            "settings": settings,
            "targets": {case: target},
            case: rows,
        }
    )
    return report


def _run_overhead(args: argparse.Namespace, device: torch.device, settings: dict) -> dict:
    report = describe(device)
    rows = run_overhead_benchmarks(
        device,
        settings["backends"],
        settings["ks"],
        calls=settings["calls"],
        warmup=settings["warmup"],
        samples=settings["samples"],
        progress=args.progress,
    )
    return _case_report(report, "overhead", OVERHEAD_TARGET, args, settings, rows)


def _inference_settings(args: argparse.Namespace, device: torch.device) -> dict:
    """The inference case's options: --train-batch (images per forward), --train-width, --warmup, --repeats."""
    settings = dict(INFERENCE_PRESETS[(device.type, args.quick)])
    given = {"batch": args.train_batch, "width": args.train_width, "warmup": args.warmup, "samples": args.repeats}
    settings.update({name: value for name, value in given.items() if value is not None})
    if min(settings["batch"], settings["width"], settings["samples"]) < 1 or settings["warmup"] < 0:
        raise ValueError(f"--train-batch, --train-width, --repeats: expected >= 1 and --warmup >= 0, got {settings}")
    return settings


def _run_inference(args: argparse.Namespace, device: torch.device, settings: dict) -> dict:
    report = describe(device)
    rows = run_inference_benchmarks(device, settings, progress=args.progress)
    return _case_report(report, "inference", INFERENCE_TARGET, args, settings, rows)


def _print_ops(report: dict, markdown: bool) -> None:
    print(f"copy bandwidth {report['copy_gbps']:.1f} GB/s (largest tensor; each row uses its own size)\n")
    print(op_table(report["results"], markdown=markdown))
    if report["train_step"]:
        print()
        print(train_step_table(report["train_step"], markdown=markdown))


def _print_overhead(report: dict, markdown: bool) -> None:
    print(f"microseconds per call, median (p20-p80) of {report['settings']['samples']} samples\n")
    print(overhead_table(report["overhead"], markdown=markdown))


def _print_inference(report: dict, markdown: bool) -> None:
    settings = report["settings"]
    print(f"eval mode, batch {settings['batch']}, width {settings['width']}, {settings['samples']} samples\n")
    print(inference_table(report["inference"], markdown=markdown))


@dataclass(frozen=True)
class Case:
    """One `--case`: how it runs (returning the JSON document), which keys its document holds beside
    the common ones, how they print, and the rows that carry a target verdict."""

    help: str
    settings: Callable[[argparse.Namespace, torch.device], object]  # ValueError naming a bad option
    run: Callable[[argparse.Namespace, torch.device, object], dict]
    keys: tuple[str, ...]
    print_tables: Callable[[dict, bool], None]
    verdict_rows: Callable[[dict], list[dict]]


CASES = {
    "ops": Case(
        "the op's forward/backward at ResNet-18 sizes against eager and compile, and the training step",
        _settings,
        _run_ops,
        ("copy_gbps", "results", "train_step"),
        _print_ops,
        lambda report: report["results"] + report["train_step"],
    ),
    "overhead": Case(
        "per-call time of the fused op against eager on tiny tensors (host overhead), forward under "
        "no_grad and forward+backward",
        _overhead_settings,
        _run_overhead,
        ("settings", "overhead"),
        _print_overhead,
        lambda report: report["overhead"],
    ),
    "inference": Case(
        "images/s in eval mode of a plastic ResNet-18, its static export and the static ResNet-18 "
        "at equal active paths",
        _inference_settings,
        _run_inference,
        ("settings", "inference"),
        _print_inference,
        lambda report: report["inference"],
    ),
}
COMMON_KEYS = ("device", "date", "versions", "threads", "targets")


def _case_of(report: dict) -> str:
    return report.get("case", "ops")  # reports written before --case existed hold the ops case


def print_report(report: dict, *, markdown: bool = False) -> None:
    case = CASES[_case_of(report)]
    print(
        f"{_case_of(report)} | device {report['device']} | {report['date']} | torch {report['versions']['torch']} | "
        f"threads {report['threads']} | load {report.get('load_before')} -> {report.get('load_after')}"
    )
    case.print_tables(report, markdown)
    print("\ntargets: " + "; ".join(f"{k}: {v}" for k, v in report["targets"].items()))
    verdicts = [r["target"] for r in case.verdict_rows(report) if r["target"]]
    print(f"{verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS")


def load_report(path: str) -> dict:
    """A JSON written by `plasticnet bench --json`; ValueError naming the file otherwise."""
    try:
        with open(path) as f:
            report = json.load(f)
    except OSError as error:
        raise ValueError(f"--show {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise ValueError(f"--show {path} is not JSON ({error})") from None
    if not isinstance(report, dict):
        raise ValueError(f"--show {path} is not a `plasticnet bench --json` report (it is no JSON object)")
    if _case_of(report) not in CASES:
        raise ValueError(f"--show {path}: unknown case {_case_of(report)!r} (known: {list(CASES)})")
    missing = [key for key in COMMON_KEYS + CASES[_case_of(report)].keys if key not in report]
    if missing:
        raise ValueError(f"--show {path} is not a `plasticnet bench --json` report (it lacks {missing})")
    return report


def check_writable(path: str) -> None:
    """Fail now, not after the whole benchmark, when --json cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"--json {path} is a directory; name a file")
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as error:
        raise ValueError(f"--json {path}: cannot write into {directory} ({error.strerror})") from None


def run(args: argparse.Namespace) -> int:
    try:
        if args.show:
            print_report(load_report(args.show), markdown=args.markdown)
            return 0
        if args.json:
            check_writable(args.json)
        device = _device(args.device)
        case = CASES[args.case]
        settings = case.settings(args, device)
    except ValueError as e:
        print(f"plasticnet bench: error: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = case.run(args, device, settings)
    print_report(report, markdown=args.markdown)
    if args.json:
        text = json.dumps(report, indent=1)
        atomic_write(args.json, lambda f: f.write(text.encode()))
        print(f"wrote {args.json}")
    return 0
