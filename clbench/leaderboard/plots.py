"""The leaderboard's plots (matplotlib, Agg, PNG), one set per suite entry.

PNGs are deterministic: a fixed style, font and dpi, and no metadata that varies (no
``Software`` version, no date), so a rebuild writes the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from clbench.leaderboard.aggregate import Row, dominates  # noqa: E402

STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "figure.dpi": 100, "savefig.dpi": 100,
         "axes.grid": True, "grid.alpha": 0.3, "path.simplify": False}
PLOTS = {"heatmaps": "accuracy matrix R[i][j] per agent (mean over seeds)",
         "curves": "accuracy on each task as tasks arrive",
         "bytes": "state bytes after each task",
         "pareto": "final accuracy vs final bytes: the line is the front of these two axes; "
                   "★ marks the table's front, which also counts learn FLOPs"}


def mean_matrix(row: Row) -> np.ndarray:
    """The seed-mean accuracy matrix of a row, NaN where a task was not asked."""
    n_tasks = len(row.task_names)
    total = np.zeros((n_tasks, n_tasks))
    count = np.zeros((n_tasks, n_tasks))
    for run in row.runs:
        for i, accuracies in enumerate(run.result.accuracy):
            for j, value in enumerate(accuracies):
                if value is not None:
                    total[i, j] += value
                    count[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _colours(rows: Sequence[Row]) -> dict[str, tuple]:
    """One colour per row (variants of one agent are rows of their own), by its label."""
    palette = plt.get_cmap("tab20").colors
    return {row.label: palette[i % len(palette)] for i, row in enumerate(rows)}


def _grid(n: int) -> tuple[plt.Figure, list]:
    columns = min(4, n)
    lines = math.ceil(n / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.9 * lines),
                                squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for axis in flat[n:]:
        axis.set_visible(False)
    return figure, flat[:n]


def heatmaps(rows: Sequence[Row]) -> plt.Figure:
    figure, axes = _grid(len(rows))
    for axis, row in zip(axes, rows, strict=True):
        image = axis.imshow(mean_matrix(row), vmin=0.4, vmax=1.0, cmap="viridis",
                            interpolation="nearest")
        axis.set_title(row.label)
        axis.set_xlabel("task j")
        axis.set_ylabel("after learning task i")
        axis.grid(False)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    return figure


def _evaluated_line(axis, xs, ys, **style) -> None:
    """A line through the points evaluated: a sparse schedule's skipped rows (NaN) are
    stepped over, not drawn as gaps."""
    xs, ys = np.asarray(xs), np.asarray(ys, dtype=float)
    kept = ~np.isnan(ys)
    axis.plot(xs[kept], ys[kept], **style)


def curves(rows: Sequence[Row]) -> plt.Figure:
    figure, axes = _grid(len(rows))
    for axis, row in zip(axes, rows, strict=True):
        matrix = mean_matrix(row)
        n_tasks = len(matrix)
        colours = plt.get_cmap("viridis")(np.linspace(0, 1, n_tasks))
        for j in range(n_tasks):
            _evaluated_line(axis, range(j + 1, n_tasks + 1), matrix[j:, j], color=colours[j],
                            linewidth=0.8)
        seen = [np.mean(matrix[i, : i + 1]) for i in range(n_tasks)]  # NaN: a sparse row
        _evaluated_line(axis, range(1, n_tasks + 1), seen, color="black", linewidth=2,
                        label="mean over tasks seen")
        axis.set_ylim(min(0.4, np.nanmin(matrix) - 0.02), 1.02)
        axis.set_title(row.label)
        axis.set_xlabel("tasks learned")
        axis.set_ylabel("accuracy")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(loc="lower left", fontsize=7)
    return figure


def bytes_plot(rows: Sequence[Row]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    colours = _colours(rows)
    for row in rows:
        per_task = np.mean([run.result.storage["bytes"] for run in row.runs], axis=0)
        axis.plot(range(1, len(per_task) + 1), np.maximum(per_task, 1), marker=".",
                  color=colours[row.label], label=row.label)
    reference = rows[0].runs[0].result.storage["reference_fp32_bytes"]
    axis.plot(range(1, len(reference) + 1), reference, color="grey", linestyle="--",
              label="one fp32 network per task")
    axis.set_yscale("log")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("tasks learned")
    axis.set_ylabel("state bytes")
    axis.legend(fontsize=7, ncol=2)
    return figure


def pareto_plot(rows: Sequence[Row]) -> plt.Figure:
    """Final ACC against final bytes. The line and the large black-edged markers are this
    plane's own front (no other agent has higher ACC and fewer bytes); the legend's ★ is
    the table's mark, which also counts learn FLOPs, so an agent can carry ★ off this
    line (cheaper to learn than every agent that beats it here)."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    colours = _colours(rows)
    points = {row.label: (row.figures["acc"].mean, row.figures["bytes"].mean, None)
              for row in rows}
    front = {label for label, point in points.items()
             if not any(dominates(other, point) for other in points.values())}
    for row in rows:
        acc, size = row.figures["acc"], row.figures["bytes"]
        on_front = row.label in front
        axis.errorbar(max(size.mean, 1), acc.mean, yerr=acc.std or 0, fmt="o",
                      color=colours[row.label], markersize=8 if on_front else 5,
                      markeredgecolor="black" if on_front else colours[row.label],
                      label=row.label + (" ★" if row.pareto else ""))
    line = sorted((max(points[label][1], 1), points[label][0]) for label in front)
    if line:
        xs, ys = zip(*line, strict=True)
        axis.step(xs, np.maximum.accumulate(ys), where="post", color="black", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("final state bytes")
    axis.set_ylabel("final ACC")
    axis.legend(fontsize=7, ncol=2)
    return figure


MAKERS = {"heatmaps": heatmaps, "curves": curves, "bytes": bytes_plot, "pareto": pareto_plot}


def write_plots(rows: Sequence[Row], folder: Path) -> dict[str, Path]:
    """Write the four plots of one suite entry's rows into ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    with matplotlib.rc_context(STYLE):
        for name, make in MAKERS.items():
            figure = make(rows)
            path = folder / f"{name}.png"
            figure.savefig(path, format="png", metadata={"Software": None},
                           bbox_inches="tight", pad_inches=0.1)
            plt.close(figure)
            written[name] = path
    return written
