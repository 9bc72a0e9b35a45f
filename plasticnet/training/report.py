"""`plasticnet report ROOT [ROOT ...]`: statistics over seeds of the run directories under
every ROOT together (each a `plasticnet sweep` ROOT, or any directory of `plasticnet train`
runs), so that e.g. the static runs of one sweep pair with the plastic runs of another.

Per configuration (model, budget): mean, standard deviation and 95 % Student-t interval over
seeds of the final test accuracy, the test accuracy at the epoch of best validation accuracy,
images/s, active parameters and MACs. Per plastic model whose static twin ran at the same
budget: the same statistics of the differences plastic − static, paired by seed. Written to
OUT/report.md (tables, plots linked), OUT/report.json (the same numbers, the ROOTs and the runs
used), OUT/pareto.png and OUT/curves.png; OUT is --out, by default the first ROOT. Runs that
have not reached their last epoch are left out and listed.
"""

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
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
    """One finished run's numbers. Accuracies are fractions; lists run over epochs 1..epochs.
    per_stage: the per-stage counts the run was given (budget_per_stage of a plastic run,
    blocks_per_stage of a static one), None when it was given none."""

    root: str  # the report ROOT it was found under; its directory is ROOT/name
    name: str
    model: str
    budget: int | None
    per_stage: tuple[int, ...] | None
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

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, self.name)


@dataclass(frozen=True)
class UnfinishedRun:
    root: str
    name: str
    epochs_done: int
    epochs: int

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, self.name)


def read_run(root: str, name: str, config: dict, metrics: list[dict]) -> RunResult:
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
    # runs written before per-stage counts existed lack the key: they had none
    per_stage = config.get("budget_per_stage" if config["model"].startswith("plastic-") else "blocks_per_stage")
    return RunResult(
        root=root,
        name=name,
        model=config["model"],
        budget=config["budget"],
        per_stage=None if per_stage is None else tuple(per_stage),
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
                finished.append(read_run(root, entry.name, config, metrics))
            else:
                done = max((m["epoch"] for m in metrics), default=0)
                unfinished.append(UnfinishedRun(root, entry.name, done, config["epochs"]))
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
    per_stage: tuple[int, ...] | None  # as RunResult.per_stage, the same for all its runs
    seeds: list[int]
    runs: list[str]  # run directories
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
    roots: list[str]
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
                f"runs differ in {field} ({first.run_dir}: {getattr(first, field)}, {other.run_dir}: "
                f"{getattr(other, field)}); the runs of one report must share dataset, epochs and val_size"
            )
    return Settings(first.dataset, first.epochs, first.val_size)


def group_configurations(runs: list[RunResult]) -> dict[tuple[str, int | None], list[RunResult]]:
    """(model, budget) -> its runs in seed order. A seed twice in one configuration, or runs of
    one configuration given different per-stage counts, is an error naming both run directories."""
    groups: dict[tuple[str, int | None], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.model, run.budget), []).append(run)
    for group in groups.values():
        group.sort(key=lambda r: r.seed)
        for previous, run in zip(group, group[1:]):
            if previous.seed == run.seed:
                raise ValueError(f"{previous.run_dir} and {run.run_dir} are the same configuration and seed")
        other = next((r for r in group if r.per_stage != group[0].per_stage), None)
        if other is not None:
            raise ValueError(
                f"{group[0].run_dir} and {other.run_dir} are {other.model} at budget {other.budget} with different "
                f"per-stage counts ({group[0].per_stage} and {other.per_stage}); report them separately"
            )
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] is not None, item[0][1] or 0)))


def summarize_configuration(model: str, budget: int | None, runs: list[RunResult]) -> ConfigurationSummary:
    return ConfigurationSummary(
        model=model,
        budget=budget,
        per_stage=runs[0].per_stage,
        seeds=[r.seed for r in runs],
        runs=[r.run_dir for r in runs],
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


def build_report(roots: Sequence[str]) -> tuple[Report, dict[tuple[str, int | None], list[RunResult]]]:
    """The report's numbers over the runs of every ROOT (plots not yet drawn) and the runs
    grouped by configuration."""
    if isinstance(roots, str) or not roots:
        raise ValueError(f"roots: expected a non-empty list of directories, got {roots!r}")
    runs, unfinished = [], []
    for root in roots:
        finished, left_out = load_runs(root)
        runs += finished
        unfinished += left_out
    if not runs:
        listed = f" ({len(unfinished)} unfinished: {', '.join(u.name for u in unfinished)})" if unfinished else ""
        raise ValueError(f"{', '.join(roots)}: no finished run directories{listed}")
    groups = group_configurations(runs)
    report = Report(
        roots=list(roots),
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


def write_report(roots: Sequence[str], out: str | None = None) -> Report:
    """Write report.md, report.json, curves.png and (when the runs record MACs) pareto.png over
    the runs of every ROOT into `out` (default: the first ROOT), made if missing."""
    report, groups = build_report(roots)
    out = roots[0] if out is None else out
    os.makedirs(out, exist_ok=True)
    plot_curves([(*key, runs) for key, runs in groups.items()], os.path.join(out, CURVES))
    plots = [CURVES]
    if plot_pareto(report.configurations, os.path.join(out, PARETO)):
        plots.insert(0, PARETO)
    report = replace(report, plots=plots)
    _write_text(os.path.join(out, REPORT_JSON), json.dumps(asdict(report), indent=2) + "\n")
    _write_text(os.path.join(out, REPORT_MD), markdown(report, out))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "roots",
        metavar="ROOT",
        nargs="+",
        help="directories whose subdirectories are run directories, reported together (e.g. two sweeps)",
    )
    parser.add_argument("--out", default=None, help="directory the report is written to (None: the first ROOT)")


def run(args: argparse.Namespace) -> int:
    out = args.roots[0] if args.out is None else args.out
    try:
        report = write_report(args.roots, out)
    except ValueError as error:
        print(f"plasticnet report: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(report.runs)} finished runs in {len(report.configurations)} configurations"
        f"{f', {len(report.unfinished)} unfinished left out' if report.unfinished else ''}: "
        f"{os.path.join(out, REPORT_MD)}"
    )
    return 0
