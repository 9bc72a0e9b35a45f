"""curves.png (loss and accuracy per epoch, from metrics.jsonl) and topology.png (active
paths over the optimizer steps, from events.jsonl).

Figures are drawn with matplotlib.figure.Figure and saved through its own canvas, not pyplot:
no display, no global backend switch, nothing changed for a user's own plots.
"""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from plasticnet.training.checkpoint import atomic_write


def _save(figure: Figure, path: str) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=120))


def plot_curves(metrics: list[dict], path: str) -> None:
    epochs = [m["epoch"] for m in metrics]
    figure = Figure(figsize=(10, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for split in [s for s in ("train", "val", "test") if f"{s}_acc" in metrics[0]]:
        loss_axes.plot(epochs, [m[f"{split}_loss"] for m in metrics], marker="o", label=split)
        accuracy_axes.plot(epochs, [100 * m[f"{split}_acc"] for m in metrics], marker="o", label=split)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    _save(figure, path)


def topology_timeline(metrics: list[dict], events: list[dict]) -> list[tuple[int, list]]:
    """(first step, active paths) of every topology the run had, in order. The initial one is
    the first rewire undone (or the first epoch's, when nothing was rewired before it)."""
    if not events:
        return [(0, metrics[0]["active_paths"])]
    first = events[0]
    initial = {tuple(p) for p in first["active_paths"]} - {tuple(g["path"]) for g in first["grown"]} | {
        tuple(d["path"]) for d in first["dropped"]
    }
    return [(0, sorted(initial))] + [(e["step"], e["active_paths"]) for e in events]


def plot_topology(metrics: list[dict], events: list[dict], path: str) -> None:
    """One row per path (i -> j) that was ever active, filled over the optimizer steps while it
    was; dotted lines mark the epochs' ends."""
    timeline = topology_timeline(metrics, events)
    paths = sorted({tuple(p) for _, active in timeline for p in active}, key=lambda p: (p[1], p[0]))
    row = {p: r for r, p in enumerate(paths)}
    active = np.zeros((len(paths), len(timeline)))
    for column, (_, snapshot) in enumerate(timeline):
        for p in snapshot:
            active[row[tuple(p)], column] = 1
    edges = [step for step, _ in timeline] + [max(metrics[-1]["step"], timeline[-1][0] + 1)]
    figure = Figure(figsize=(8, max(3.0, 0.18 * len(paths) + 1.5)))
    axes = figure.subplots()
    axes.pcolormesh(edges, np.arange(len(paths) + 1) - 0.5, active, cmap="Greys", vmin=0, vmax=1)
    for m in metrics:
        axes.axvline(m["step"], color="tab:blue", linestyle=":", linewidth=1)
    axes.set_ylim(len(paths) - 0.5, -0.5)
    axes.set_yticks(range(len(paths)), [f"{i}→{j}" for i, j in paths], fontsize=6)
    axes.set(
        xlabel="optimizer step (dotted: end of an epoch)",
        ylabel="path (node i → node j)",
        title=f"active paths ({len(timeline[-1][1])} at the end, {len(events)} rewires)",
    )
    figure.tight_layout()
    _save(figure, path)
