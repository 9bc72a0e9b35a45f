"""report.md: the report's numbers as markdown tables. Accuracies in percent with 2 decimals,
accuracy differences in percentage points, intervals as [lo, hi], "n/a" where a number does
not exist (no validation split, one seed, a metric the runs did not record). Run directories
are given relative to the report's directory, so that they resolve from report.md."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from plasticnet.training.report_plots import PARETO

if TYPE_CHECKING:  # the report module imports this one
    from plasticnet.training.report import ConfigurationSummary, Report, Summary

NOT_AVAILABLE = "n/a"


def _percent(summary: Summary | None) -> str:
    if summary is None:
        return NOT_AVAILABLE
    if summary.std is None:
        return f"{100 * summary.mean:.2f}"
    return f"{100 * summary.mean:.2f} ± {100 * summary.std:.2f}"


def _percent_interval(summary: Summary | None) -> str:
    if summary is None or summary.ci95 is None:
        return NOT_AVAILABLE
    low, high = summary.ci95
    return f"[{100 * low:.2f}, {100 * high:.2f}]"


def _count(summary: Summary | None) -> str:
    """Large counts in k/M/G; the std only where the seeds differ."""
    if summary is None:
        return NOT_AVAILABLE
    scale, unit = next(((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if summary.mean >= s), (1, ""))
    text = f"{summary.mean / scale:.2f}{unit}" if unit else f"{summary.mean:.0f}"
    if summary.std:
        text += f" ± {summary.std / scale:.2f}{unit}" if unit else f" ± {summary.std:.0f}"
    return text


def _rate(summary: Summary) -> str:
    return f"{summary.mean:.0f}" if summary.std is None else f"{summary.mean:.0f} ± {summary.std:.0f}"


def _budget(budget: int | None) -> str:
    return "default" if budget is None else str(budget)


def _per_stage(configuration: ConfigurationSummary) -> str:
    if configuration.per_stage is not None:
        return ",".join(map(str, configuration.per_stage))
    return "global" if configuration.model.startswith("plastic-") else NOT_AVAILABLE


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(report: Report, out: str) -> str:
    """report.md of `report`, to be written into the directory `out`."""
    settings = report.settings
    validation = f"{settings.val_size} validation samples" if settings.val_size else "no validation split"
    title = ", ".join(os.path.basename(os.path.abspath(root)) for root in report.roots)
    roots = ", ".join(f"`{os.path.relpath(root, out)}`" for root in report.roots)
    lines = [
        f"# Sweep report: {title}",
        "",
        f"{len(report.runs)} finished runs in {len(report.configurations)} configurations from {roots}; dataset "
        f"{settings.dataset}, {settings.epochs} epochs, {validation}. Numbers are mean ± standard deviation "
        "over seeds; 95 % CI is the Student-t interval of the mean. Test accuracy at best val is the test "
        "accuracy at the epoch of highest validation accuracy (the first of equal ones). Per stage is what "
        "the runs were given per stage: a plastic model's active paths per stage (global: one budget for the "
        "whole network), a static model's blocks per stage (n/a: spread from the budget or the architecture's).",
        "",
        "## Configurations",
        "",
    ]
    lines += _table(
        [
            "model",
            "budget",
            "per stage",
            "seeds",
            "final test acc (%)",
            "95 % CI",
            "test acc at best val (%)",
            "95 % CI",
            "images/s",
            "active parameters",
            "MACs/image",
        ],
        [
            [
                c.model,
                _budget(c.budget),
                _per_stage(c),
                str(len(c.seeds)),
                _percent(c.final_test_acc),
                _percent_interval(c.final_test_acc),
                _percent(c.best_val_test_acc),
                _percent_interval(c.best_val_test_acc),
                _rate(c.images_per_s),
                _count(c.active_parameters),
                _count(c.macs),
            ]
            for c in report.configurations
        ],
    )
    lines += ["", "## Plastic − static, paired by seed", ""]
    if report.paired_differences:
        lines += [
            "Differences plastic − static in percentage points over the seeds both ran; an interval that "
            "excludes 0 is a difference at the 5 % level.",
            "",
        ]
        lines += _table(
            ["plastic", "static", "budget", "n", "Δ final test acc (pp)", "95 % CI", "Δ at best val (pp)", "95 % CI"],
            [
                [
                    d.plastic,
                    d.static,
                    _budget(d.budget),
                    str(d.final_test_acc.n),
                    _percent(d.final_test_acc),
                    _percent_interval(d.final_test_acc),
                    _percent(d.best_val_test_acc),
                    _percent_interval(d.best_val_test_acc),
                ]
                for d in report.paired_differences
            ],
        )
    else:
        lines.append("No plastic model has its static twin (plastic-X and X) at the same budget and seed.")
    lines += ["", "## Plots", ""]
    if PARETO not in report.plots:
        lines += [f"{PARETO} is not drawn: the runs record no MACs.", ""]
    lines += [f"![{name}]({name})" for name in report.plots]
    lines += ["", "## Runs used", ""]
    lines += _table(
        [
            "run directory",
            "model",
            "budget",
            "seed",
            "final test acc (%)",
            "best val epoch",
            "test acc at best val (%)",
        ],
        [
            [
                f"`{os.path.relpath(r.run_dir, out)}`",
                r.model,
                _budget(r.budget),
                str(r.seed),
                f"{100 * r.final_test_acc:.2f}",
                NOT_AVAILABLE if r.best_val_epoch is None else str(r.best_val_epoch),
                NOT_AVAILABLE if r.best_val_test_acc is None else f"{100 * r.best_val_test_acc:.2f}",
            ]
            for r in report.runs
        ],
    )
    if report.unfinished:
        lines += ["", "## Unfinished runs (left out)", ""]
        lines += [
            f"- `{os.path.relpath(u.run_dir, out)}`: {u.epochs_done} of {u.epochs} epochs" for u in report.unfinished
        ]
    return "\n".join(lines) + "\n"
