"""The report's figures: pareto.png (final test accuracy against MACs per configuration) and
curves.png (accuracy per epoch, mean over seeds). Drawn on matplotlib Figures directly, not
pyplot: no global backend or figure state, so no display is needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from plasticnet.training.checkpoint import atomic_write

if TYPE_CHECKING:  # the report module imports this one
    from plasticnet.training.report import ConfigurationSummary, RunResult

PARETO = "pareto.png"
CURVES = "curves.png"
MARKERS = "osD^v<>pPX*h"


def _save(figure: Figure, path: str) -> None:
    figure.tight_layout()
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=120))


def plot_pareto(configurations: list[ConfigurationSummary], path: str) -> bool:
    """Mean final test accuracy (95 % t-interval bars) against MACs per image, one colour and
    marker per model, each point labelled with its budget. False, and nothing drawn, when no
    configuration recorded MACs."""
    drawn = [c for c in configurations if c.macs is not None]
    if not drawn:
        return False
    figure = Figure(figsize=(7, 5))
    axes = figure.subplots()
    models = list(dict.fromkeys(c.model for c in drawn))
    for index, model in enumerate(models):
        points = sorted((c for c in drawn if c.model == model), key=lambda c: c.macs.mean)
        macs = [c.macs.mean for c in points]
        accuracy = np.array([100 * c.final_test_acc.mean for c in points])
        intervals = np.array([100 * np.array(c.final_test_acc.ci95 or (c.final_test_acc.mean,) * 2) for c in points])
        error = np.stack([accuracy - intervals[:, 0], intervals[:, 1] - accuracy])
        colour = f"C{index % 10}"
        axes.errorbar(
            macs, accuracy, yerr=error, fmt=MARKERS[index % len(MARKERS)] + "-", color=colour, capsize=3, label=model
        )
        for c, x, y in zip(points, macs, accuracy):
            text = "default" if c.budget is None else f"b{c.budget}"
            axes.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color=colour)
    axes.set(
        xlabel="forward MACs per image",
        ylabel="final test accuracy (%)",
        title="mean over seeds, bars: 95 % t-interval",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, path)
    return True


def plot_curves(configurations: list[tuple[str, int | None, list[RunResult]]], path: str) -> None:
    """Mean test accuracy (solid) and validation accuracy (dashed, when there is a validation
    split) against epoch per configuration (model, budget, runs), with a band of ±1 std over
    seeds: one panel per budget, so that the models at one budget share axes; colours per model
    as in pareto.png."""
    budgets = list(dict.fromkeys(budget for _, budget, _ in configurations))
    colours = {model: f"C{index % 10}" for index, model in enumerate(dict.fromkeys(m for m, _, _ in configurations))}
    figure = Figure(figsize=(min(4.5 * len(budgets), 18), 4.5))
    panels = figure.subplots(1, len(budgets), sharey=True, squeeze=False)[0]
    for axes, budget in zip(panels, budgets):
        for model, _, runs in (c for c in configurations if c[1] == budget):
            curves = [("test", "-", [r.test_acc for r in runs])]
            if runs[0].val_acc is not None:
                curves.append(("val", "--", [r.val_acc for r in runs]))
            for split, style, values in curves:
                accuracy = 100 * np.array(values)
                epochs = np.arange(1, accuracy.shape[1] + 1)
                mean = accuracy.mean(axis=0)
                axes.plot(epochs, mean, style, color=colours[model], marker="o", markersize=3, label=f"{model} {split}")
                if len(runs) > 1:
                    std = accuracy.std(axis=0, ddof=1)
                    axes.fill_between(epochs, mean - std, mean + std, color=colours[model], alpha=0.15, linewidth=0)
        axes.set(xlabel="epoch", title="default budget" if budget is None else f"budget {budget}")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    panels[0].set_ylabel("accuracy (%)")
    figure.suptitle("mean over seeds, band: ±1 std")
    _save(figure, path)
