"""The leaderboard's plots (matplotlib, Agg, PNG), one set per suite entry.

PNGs are deterministic: a fixed style, font and dpi, and no metadata that varies (no
``Software`` version, no date), so a rebuild writes the same bytes.
"""

from __future__ import annotations

import math
import textwrap
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


# The grids' geometry in inches, fixed rather than found by a layout engine: constrained
# layout measured every tick label of every panel twice and took half of a build's time.
# The left gap holds a panel's tick labels and y label, the top one a title of two lines.
PANEL = (2.2, 2.2)
GAP = (0.8, 0.95)
MARGINS = {"left": 0.65, "right": 0.35, "top": 0.5, "bottom": 0.5}
COLORBAR = (0.15, 0.85)  # width, and the margin it and its label take on the right
# a longer label wraps, onto two lines at most (then cut, with "…"): one line of this many
# characters is at most a little wider than its panel, or half a legend's width
TITLE_CHARACTERS = 28
LEGEND_CHARACTERS = 34


def _grid(n: int, colorbar: bool = False) -> tuple[plt.Figure, list]:
    """``n`` panels of ``PANEL`` inches, four to a line, with room on the right for a
    colour bar if asked (the figure's last axes, then)."""
    columns = min(4, n)
    lines = math.ceil(n / columns)
    right = MARGINS["right"] + (COLORBAR[1] if colorbar else 0)
    width = MARGINS["left"] + right + columns * PANEL[0] + (columns - 1) * GAP[0]
    height = MARGINS["top"] + MARGINS["bottom"] + lines * PANEL[1] + (lines - 1) * GAP[1]
    figure, axes = plt.subplots(lines, columns, figsize=(width, height), squeeze=False,
                                gridspec_kw={"left": MARGINS["left"] / width,
                                             "right": 1 - right / width,
                                             "top": 1 - MARGINS["top"] / height,
                                             "bottom": MARGINS["bottom"] / height,
                                             "wspace": GAP[0] / PANEL[0],
                                             "hspace": GAP[1] / PANEL[1]})
    flat = list(axes.flat)
    for axis in flat[n:]:
        axis.set_visible(False)
    if colorbar:
        bar_height = min(height - MARGINS["top"] - MARGINS["bottom"], 6.0)
        figure.add_axes(((width - right + 0.3) / width, (height - bar_height) / 2 / height,
                         COLORBAR[0] / width, bar_height / height))
    return figure, flat[:n]


def _single() -> tuple[plt.Figure, plt.Axes]:
    """One panel of 6.4 x 4.2 inches, its margins fixed as the grids' are."""
    width, height = 6.4, 4.2
    figure, axis = plt.subplots(figsize=(width, height))
    figure.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, top=1 - 0.2 / height,
                           bottom=0.55 / height)
    return figure, axis


def _short(label: str, width: int) -> str:
    """``label`` on at most two lines of ``width`` characters."""
    return textwrap.fill(label, width, max_lines=2, placeholder=" …")


def _title(axis, label: str) -> None:
    axis.set_title(_short(label, TITLE_CHARACTERS))


def heatmaps(rows: Sequence[Row]) -> plt.Figure:
    figure, axes = _grid(len(rows), colorbar=True)
    for axis, row in zip(axes, rows, strict=True):
        image = axis.imshow(mean_matrix(row), vmin=0.4, vmax=1.0, cmap="viridis",
                            interpolation="nearest")
        _title(axis, row.label)
        axis.set_xlabel("task j")
        axis.set_ylabel("after learning task i")
        axis.grid(False)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    figure.colorbar(image, cax=figure.axes[-1], label="accuracy")
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
        _title(axis, row.label)
        axis.set_xlabel("tasks learned")
        axis.set_ylabel("accuracy")
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axes[0].legend(loc="lower left", fontsize=7)
    return figure


def bytes_plot(rows: Sequence[Row]) -> plt.Figure:
    figure, axis = _single()
    colours = _colours(rows)
    for row in rows:
        per_task = np.mean([run.result.storage["bytes"] for run in row.runs], axis=0)
        axis.plot(range(1, len(per_task) + 1), np.maximum(per_task, 1), marker=".",
                  color=colours[row.label], label=_short(row.label, LEGEND_CHARACTERS))
    reference = rows[0].runs[0].result.storage["reference_fp32_bytes"]
    axis.plot(range(1, len(reference) + 1), reference, color="grey", linestyle="--",
              label="one fp32 network per task")
    axis.set_yscale("log")
    axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axis.set_xlabel("tasks learned")
    axis.set_ylabel("state bytes")
    axis.legend(fontsize=7, ncol=2)
    return figure


def pareto_plot(rows: Sequence[Row]) -> plt.Figure:
    """Final ACC against final bytes. The line and the large black-edged markers are this
    plane's own front (no other agent has higher ACC and fewer bytes); the legend's ★ is
    the table's mark, which also counts learn FLOPs, so an agent can carry ★ off this
    line (cheaper to learn than every agent that beats it here)."""
    figure, axis = _single()
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
                      label=_short(row.label, LEGEND_CHARACTERS) + (" ★" if row.pareto
                                                                     else ""))
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
            figure.savefig(path, format="png", metadata={"Software": None})
            plt.close(figure)
            written[name] = path
    return written
