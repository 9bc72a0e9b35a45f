"""`plasticnet report ROOT`: statistics over seeds of the run directories under ROOT (a
`plasticnet sweep` ROOT, or any directory of `plasticnet train` runs).

Per configuration (model, budget): mean, standard deviation and 95 % Student-t interval over
seeds of the final test accuracy, the test accuracy at the epoch of best validation accuracy,
images/s, active parameters and MACs. Per plastic model whose static twin ran at the same
budget: the same statistics of the differences plastic − static, paired by seed. Written to
ROOT/report.md (tables, plots linked), ROOT/report.json (the same numbers and the runs used),
ROOT/pareto.png and ROOT/curves.png. Runs that have not reached their last epoch are left out
and listed.
"""

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace

import numpy as np

from plasticnet.training.checkpoint import atomic_write
from plasticnet.training.report_format import markdown
from plasticnet.training.report_plots import CURVES, PARETO, plot_curves, plot_pareto
from plasticnet.training.run_dir import CONFIG, METRICS, read_jsonl

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
CONFIDENCE = 0.95


def is_finished(config: dict, metrics: list[dict]) -> bool:
    """A run is finished when metrics.jsonl has the line of its last epoch."""
    return any(m["epoch"] == config["epochs"] for m in metrics)


@dataclass(frozen=True)
class Summary:
    """Mean over n values; std (ddof=1) and the 95 % t-interval of the mean need n >= 2."""

    n: int
    mean: float
    std: float | None
    ci95: tuple[float, float] | None


def summarize(values: list[float]) -> Summary:
    if not values:
        raise ValueError("summarize: expected at least one value, got none")
    # scipy is imported here, not at the top: every `plasticnet` command imports this module
    from scipy.stats import t

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return Summary(n, mean, None, None)
    std = float(np.std(values, ddof=1))
    half_width = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half_width, mean + half_width))


def summarize_optional(values: list[float | None]) -> Summary | None:
    """None when any value is missing (a metric the runs did not record)."""
    return None if any(v is None for v in values) else summarize(values)


@dataclass(frozen=True)
class RunResult:
    """One finished run's numbers. Accuracies are fractions; lists run over epochs 1..epochs."""

    name: str
    model: str
    budget: int | None
    seed: int
    dataset: str
    epochs: int
    val_size: int
    test_acc: list[float]
    val_acc: list[float] | None
    final_test_acc: float
    best_val_epoch: int | None  # the first of equally good epochs
    best_val_test_acc: float | None
    images_per_s: float  # mean over the epochs after the first (which pays the warm-up)
    active_parameters: int | None
    macs: float | None  # forward multiply-accumulates per image


@dataclass(frozen=True)
class UnfinishedRun:
    name: str
    epochs_done: int
    epochs: int


def read_run(name: str, config: dict, metrics: list[dict]) -> RunResult:
    """The RunResult of a finished run from its config.json and metrics.jsonl records."""
    epochs = config["epochs"]
    records = sorted((m for m in metrics if m["epoch"] <= epochs), key=lambda m: m["epoch"])
    if [m["epoch"] for m in records] != list(range(1, epochs + 1)):
        found = [m["epoch"] for m in records]
        raise ValueError(f"{METRICS}: expected one line per epoch 1..{epochs}, got epochs {found}")
    val_size = config.get("val_size", 0)
    val_acc = [m["val_acc"] for m in records] if val_size else None
    best_val_epoch = int(np.argmax(val_acc)) + 1 if val_acc else None  # argmax: the first maximum
    timed = records[1:] or records
    final = records[-1]
    return RunResult(
        name=name,
        model=config["model"],
        budget=config["budget"],
        seed=config["seed"],
        dataset=config["dataset"],
        epochs=epochs,
        val_size=val_size,
        test_acc=[m["test_acc"] for m in records],
        val_acc=val_acc,
        final_test_acc=final["test_acc"],
        best_val_epoch=best_val_epoch,
        best_val_test_acc=records[best_val_epoch - 1]["test_acc"] if best_val_epoch else None,
        images_per_s=float(np.mean([m["images_per_s"] for m in timed])),
        active_parameters=final.get("active_parameters"),
        macs=final.get("macs"),
    )


def load_runs(root: str) -> tuple[list[RunResult], list[UnfinishedRun]]:
    """The finished and the unfinished runs among ROOT's subdirectories that hold a config.json."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: no such directory")
    finished, unfinished = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        config_path = os.path.join(entry.path, CONFIG)
        if not entry.is_dir() or not os.path.isfile(config_path):
            continue
        try:
            with open(config_path) as f:
                config = json.load(f)
            metrics = read_jsonl(os.path.join(entry.path, METRICS))
            if is_finished(config, metrics):
                finished.append(read_run(entry.name, config, metrics))
            else:
                done = max((m["epoch"] for m in metrics), default=0)
                unfinished.append(UnfinishedRun(entry.name, done, config["epochs"]))
        except (KeyError, ValueError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise ValueError(f"{entry.path}: not a readable run directory ({what})") from None
    return finished, unfinished


@dataclass(frozen=True)
class Settings:
    """What every run of one report must share, for its runs to be comparable."""

    dataset: str
    epochs: int
    val_size: int


@dataclass(frozen=True)
class ConfigurationSummary:
    model: str
    budget: int | None
    seeds: list[int]
    runs: list[str]
    final_test_acc: Summary
    best_val_test_acc: Summary | None
    images_per_s: Summary
    active_parameters: Summary | None
    macs: Summary | None


@dataclass(frozen=True)
class PairedDifference:
    """plastic − static over the seeds both ran, paired by seed."""

    plastic: str
    static: str
    budget: int | None
    seeds: list[int]
    final_test_acc: Summary
    best_val_test_acc: Summary | None


@dataclass(frozen=True)
class Report:
    settings: Settings
    configurations: list[ConfigurationSummary]
    paired_differences: list[PairedDifference]
    runs: list[RunResult]
    unfinished: list[UnfinishedRun]
    plots: list[str]


def _settings(runs: list[RunResult]) -> Settings:
    first = runs[0]
    for field in ("dataset", "epochs", "val_size"):
        other = next((r for r in runs if getattr(r, field) != getattr(first, field)), None)
        if other is not None:
            raise ValueError(
                f"runs differ in {field} ({first.name}: {getattr(first, field)}, {other.name}: "
                f"{getattr(other, field)}); report one sweep at a time"
            )
    return Settings(first.dataset, first.epochs, first.val_size)


def group_configurations(runs: list[RunResult]) -> dict[tuple[str, int | None], list[RunResult]]:
    """(model, budget) -> its runs in seed order; a seed twice in one configuration is an error."""
    groups: dict[tuple[str, int | None], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.model, run.budget), []).append(run)
    for group in groups.values():
        group.sort(key=lambda r: r.seed)
        for previous, run in zip(group, group[1:]):
            if previous.seed == run.seed:
                raise ValueError(f"{previous.name} and {run.name} are the same configuration and seed")
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] is not None, item[0][1] or 0)))


def summarize_configuration(model: str, budget: int | None, runs: list[RunResult]) -> ConfigurationSummary:
    return ConfigurationSummary(
        model=model,
        budget=budget,
        seeds=[r.seed for r in runs],
        runs=[r.name for r in runs],
        final_test_acc=summarize([r.final_test_acc for r in runs]),
        best_val_test_acc=summarize_optional([r.best_val_test_acc for r in runs]),
        images_per_s=summarize([r.images_per_s for r in runs]),
        active_parameters=summarize_optional([r.active_parameters for r in runs]),
        macs=summarize_optional([r.macs for r in runs]),
    )


def paired_differences(groups: dict[tuple[str, int | None], list[RunResult]]) -> list[PairedDifference]:
    differences = []
    for (model, budget), plastic_runs in groups.items():
        static = model.removeprefix("plastic-")
        if static == model or (static, budget) not in groups:
            continue
        static_by_seed = {r.seed: r for r in groups[static, budget]}
        pairs = [(p, static_by_seed[p.seed]) for p in plastic_runs if p.seed in static_by_seed]
        if not pairs:
            continue
        best_val = [
            None if p.best_val_test_acc is None else p.best_val_test_acc - s.best_val_test_acc for p, s in pairs
        ]
        differences.append(
            PairedDifference(
                plastic=model,
                static=static,
                budget=budget,
                seeds=[p.seed for p, _ in pairs],
                final_test_acc=summarize([p.final_test_acc - s.final_test_acc for p, s in pairs]),
                best_val_test_acc=summarize_optional(best_val),
            )
        )
    return differences


def build_report(root: str) -> tuple[Report, dict[tuple[str, int | None], list[RunResult]]]:
    """The report's numbers (plots not yet drawn) and the runs grouped by configuration."""
    runs, unfinished = load_runs(root)
    if not runs:
        listed = f" ({len(unfinished)} unfinished: {', '.join(u.name for u in unfinished)})" if unfinished else ""
        raise ValueError(f"{root}: no finished run directories{listed}")
    groups = group_configurations(runs)
    report = Report(
        settings=_settings(runs),
        configurations=[summarize_configuration(model, budget, group) for (model, budget), group in groups.items()],
        paired_differences=paired_differences(groups),
        runs=runs,
        unfinished=unfinished,
        plots=[],
    )
    return report, groups


def _write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_report(root: str) -> Report:
    """Write report.md, report.json, curves.png and (when the runs record MACs) pareto.png into ROOT."""
    report, groups = build_report(root)
    plot_curves([(*key, runs) for key, runs in groups.items()], os.path.join(root, CURVES))
    plots = [CURVES]
    if plot_pareto(report.configurations, os.path.join(root, PARETO)):
        plots.insert(0, PARETO)
    report = replace(report, plots=plots)
    _write_text(os.path.join(root, REPORT_JSON), json.dumps(asdict(report), indent=2) + "\n")
    _write_text(os.path.join(root, REPORT_MD), markdown(report, title=os.path.basename(os.path.abspath(root))))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", help="directory whose subdirectories are run directories")


def run(args: argparse.Namespace) -> int:
    try:
        report = write_report(args.root)
    except ValueError as error:
        print(f"plasticnet report: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(report.runs)} finished runs in {len(report.configurations)} configurations"
        f"{f', {len(report.unfinished)} unfinished left out' if report.unfinished else ''}: "
        f"{os.path.join(args.root, REPORT_MD)}"
    )
    return 0
