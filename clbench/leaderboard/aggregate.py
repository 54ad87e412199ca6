"""Group result files into rows (one per stream x agent x non-default arguments x evaluation
schedule), aggregate their seeds (mean, sample std, 95% t-interval) and format the rows as
Markdown, CSV or LaTeX. Runs of a sparse schedule (``eval_every`` N > 1, whose forgetting
sees only the evaluated rows) never share a row with full-matrix runs; their arguments cell
says ``R every N``.

Shared by ``clbench table`` and ``clbench leaderboard build``, so both print the same figures.
A row only ever holds complete runs; files left out are listed with the reason, never shown
as a row of dashes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from clbench.agent import (
    agent_arguments,
    canonical_agent_name,
    load_agent_class,
    non_default_arguments,
)
from clbench.cli import assignment_text
from clbench.metrics import schedule_label
from clbench.results import Result

# env kwargs that say where or on what a stream ran, not which stream it is
PLACEMENT_KWARGS = ("device", "data_root")
# a learn that takes this long per task and counts 0 FLOPs did its work outside torch
UNCOUNTED_SECONDS = 1e-3
FORMATS = ("md", "csv", "latex")


@dataclass(frozen=True)
class Summary:
    """Seeds of one figure: mean, sample std and the 95% t-interval (None for one seed)."""

    mean: float
    std: float | None
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        if not values or any(v is None for v in values):
            return None
        mean = math.fsum(values) / len(values)
        if len(values) < 2:
            return cls(mean, None, None, None, len(values))
        std = statistics.stdev(values)
        half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
        return cls(mean, std, mean - half, mean + half, len(values))


@dataclass
class Run:
    """One complete, accepted result file; ``path`` as it is to be shown (relative)."""

    path: str
    result: Result
    agent: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    sealed: bool = False

    def __post_init__(self) -> None:
        self.agent = canonical_agent_name(self.result.agent["name"])
        self.arguments = non_default_arguments(self.result.agent["kwargs"],
                                               defaults_of(self.agent))


def defaults_of(agent: str) -> dict[str, Any] | None:
    """The constructor defaults of an installed agent, or None where it cannot be imported."""
    try:
        return agent_arguments(load_agent_class(agent))
    except (ValueError, TypeError):
        return None


def flops_counted(agent: str) -> bool:
    """False where an installed agent declares ``counts_flops = False`` (its learn runs
    outside torch, so the FLOP counter sees nothing)."""
    try:
        return bool(getattr(load_agent_class(agent), "counts_flops", True))
    except (ValueError, TypeError):
        return True


def stream_key(result: Result) -> str:
    """The stream a result ran on: env id and the kwargs that define it, as one string."""
    kwargs = {k: v for k, v in result.env["kwargs"].items() if k not in PLACEMENT_KWARGS}
    return f"{result.env['id']} {json.dumps(kwargs, sort_keys=True)}"


def stream_label(result: Result) -> str:
    """The stream as a reader names it: env id and the kwargs that differ from the id's
    registered defaults, e.g. ``clbench/SplitMNIST5k-v0 max_train_per_task=60``."""
    import gymnasium

    try:
        registered = gymnasium.spec(result.env["id"]).kwargs
    except gymnasium.error.Error:
        registered = {}
    changed = [f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
               for key, value in sorted(result.env["kwargs"].items())
               if key not in PLACEMENT_KWARGS and registered.get(key) != value]
    return " ".join([result.env["id"], *changed])


def major_version(result: Result) -> str:
    return str(result.versions.get("clbench") or "?").split(".")[0]


def arguments_text(arguments: dict[str, Any], eval_every: int = 1) -> str:
    """The non-default arguments as ``--agent-arg`` takes them (``dtype=int4, delta=true``),
    and ``R every N`` for a sparse evaluation schedule."""
    shown = ", ".join(assignment_text(k, v) for k, v in arguments.items()) or "defaults"
    return "; ".join(filter(None, (shown, schedule_label(eval_every))))


def where_ran(result) -> str:
    """A result's device and, where it recorded them, the machines of its sessions: the GPU
    on CUDA, else the CPU, its cores and the run's torch threads."""
    threads = result.isolation.get("threads")
    per_run = f", {threads} thread{'s' * (threads != 1)}" if threads else ""
    machines = dict.fromkeys(host["gpu"] or f"{host['cpu']}, {host['cores']} cores{per_run}"
                             for host in result.hosts)
    return f"{result.device} ({' + '.join(machines)})" if machines else result.device


@dataclass
class Row:
    """The runs of one agent (with one set of arguments) on one stream."""

    section: str
    agent: str
    arguments: dict[str, Any]
    runs: list[Run]
    eval_every: int = 1
    figures: dict[str, Summary | None] = field(default_factory=dict)
    flops_counted: bool = True
    pareto: bool = False

    @property
    def label(self) -> str:
        """How a plot names the row: ``independent``, ``independent (delta=true, dtype=int4)``
        (distinct for distinct rows of one stream)."""
        if not self.arguments and self.eval_every == 1:
            return self.agent
        return f"{self.agent} ({arguments_text(self.arguments, self.eval_every)})"

    @property
    def seeds(self) -> list[int]:
        return sorted(run.result.seed for run in self.runs)

    @property
    def devices(self) -> str:
        """The device of every run, with the machine where the run recorded it: ``cpu``,
        ``cpu (AMD EPYC 7B13, 2 cores, 1 thread)``, ``cuda (NVIDIA H100)``; ``; `` between
        runs that differ."""
        return "; ".join(sorted({where_ran(run.result) for run in self.runs}))

    @property
    def task_names(self) -> list[str]:
        return self.runs[0].result.env["task_names"]


FIGURES: dict[str, Callable[[Result], float | None]] = {
    "acc": lambda r: r.metrics.get("acc"),
    "bwt": lambda r: r.metrics.get("bwt"),
    "forgetting": lambda r: r.metrics.get("forgetting"),
    "fwt": lambda r: r.metrics.get("fwt"),
    "bytes": lambda r: r.storage["bytes"][-1],
    "compression": lambda r: r.storage["compression"][-1],
    "gflop_per_task": lambda r: None if None in r.costs["learn_flops"]
    else math.fsum(r.costs["learn_flops"]) / len(r.costs["learn_flops"]) / 1e9,
    "seconds_per_task": lambda r: math.fsum(r.costs["learn_seconds"])
    / len(r.costs["learn_seconds"]),
}


def stream_of(result: Result) -> str:
    return json.dumps(result.env["task_names"])


def one_stream_per_seed(runs: Sequence[Run], section: Callable[[Run], str]
                        ) -> tuple[list[Run], list[str]]:
    """The runs whose tasks are those the other agents of their section saw with the same
    seed (the stream more than half of that seed's runs saw), and a message for each other
    run (all of a seed's runs when no stream has that majority). Seeds may draw different
    tasks (a tuple stream draws its tuples from the seed), so rows average over different
    streams; what a comparison needs is that, seed by seed, every agent got the same tasks."""
    keys = [((section(run), run.result.seed), stream_of(run.result)) for run in runs]
    streams: dict[tuple[str, int], Counter] = {}
    for seed_key, stream in keys:
        streams.setdefault(seed_key, Counter())[stream] += 1
    kept, refused = [], []
    for run, (seed_key, stream) in zip(runs, keys, strict=True):
        counts = streams[seed_key]
        majority, seen = counts.most_common(1)[0]
        total = sum(counts.values())
        if stream == majority and 2 * seen > total:
            kept.append(run)
            continue
        refused.append(f"{seed_key[0]} / {run.agent}: {run.path} saw other tasks than the "
                       f"other runs of seed {run.result.seed} ({stream[:80]}; "
                       f"{len(counts)} different task lists among that seed's {total} runs)")
    return kept, refused


def group(runs: Sequence[Run], section: Callable[[Run], str]) -> tuple[list[Row], list[str]]:
    """Rows of ``runs`` (by section, agent, arguments, evaluation schedule); a group mixing
    environment specs, stream lengths or clbench major versions is refused, and so is a run
    given other tasks than the other agents of its seed (:func:`one_stream_per_seed`): each
    becomes a message naming its files, not a row."""
    runs, refused = one_stream_per_seed(runs, section)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (section(run), run.agent, json.dumps(run.arguments, sort_keys=True),
               run.result.eval_every)
        groups.setdefault(key, []).append(run)
    rows = []
    for (name, agent, arguments, eval_every), members in sorted(groups.items()):
        members.sort(key=lambda run: (run.result.seed, run.path))
        for what, key_of in (("environment specs", stream_key),
                             ("clbench major versions", major_version),
                             ("stream lengths", lambda r: str(len(r.env["task_names"])))):
            kinds: dict[str, list[str]] = {}
            for run in members:
                kinds.setdefault(key_of(run.result), []).append(run.path)
            if len(kinds) > 1:
                listing = "; ".join(f"{', '.join(paths)} ({kind[:80]})"
                                    for kind, paths in sorted(kinds.items()))
                refused.append(f"{name} / {agent}: refused to mix {what}: {listing}")
                break
        else:
            seeds = [run.result.seed for run in members]
            if len(set(seeds)) != len(seeds):
                refused.append(f"{name} / {agent}: the same seed twice: "
                               f"{', '.join(run.path for run in members)}")
                continue
            rows.append(_row(name, agent, json.loads(arguments), members, eval_every))
    _mark_pareto(rows)
    return rows, refused


def _row(section: str, agent: str, arguments: dict, runs: list[Run], eval_every: int) -> Row:
    row = Row(section, agent, arguments, runs, eval_every)
    row.figures = {key: Summary.of([get(run.result) for run in runs])
                   for key, get in FIGURES.items()}
    flops, seconds = row.figures["gflop_per_task"], row.figures["seconds_per_task"]
    row.flops_counted = flops_counted(agent) and not (
        flops is not None and flops.mean == 0 and seconds.mean > UNCOUNTED_SECONDS)
    return row


def dominates(a: tuple[float, float, float | None], b: tuple[float, float, float | None]
              ) -> bool:
    """Whether point ``a`` = (accuracy, bytes, learn FLOPs or None) beats ``b``: no worse on
    every axis (higher accuracy, fewer bytes, fewer FLOPs) and better on one. Where either
    point's FLOPs are None, the two are compared on accuracy and bytes alone."""
    axes = [(-a[0], -b[0]), (a[1], b[1])]
    if a[2] is not None and b[2] is not None:
        axes.append((a[2], b[2]))
    return all(x <= y for x, y in axes) and any(x < y for x, y in axes)


def _mark_pareto(rows: list[Row]) -> None:
    """Mark, within each section, the rows no other row beats on accuracy (higher), bytes
    and learn FLOPs (lower). Where either row's FLOPs are unknown or not counted, the two
    are compared on accuracy and bytes alone."""
    def point(row: Row) -> tuple[float, float, float | None]:
        flops = row.figures["gflop_per_task"]
        return (row.figures["acc"].mean, row.figures["bytes"].mean,
                flops.mean if flops is not None and row.flops_counted else None)

    for row in rows:
        row.pareto = not any(dominates(point(other), point(row))
                             for other in rows if other.section == row.section)


# ----------------------------------------------------------------------------- formats
COLUMNS = ("agent", "arguments", "ACC", "ACC 95% CI", "BWT", "forgetting", "FWT",
           "final bytes", "compression", "learn GFLOP/task", "learn s/task", "device", "seeds",
           "Pareto")


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _mean_std(summary: Summary | None, digits: int, missing: str = "n/a") -> str:
    if summary is None:
        return missing
    text = _number(summary.mean, digits)
    return text if summary.std is None else f"{text} ± {_number(summary.std, digits)}"


def row_cells(row: Row) -> list[str]:
    """A row's human-readable cells, in :data:`COLUMNS` order (mean ± std over seeds)."""
    f = row.figures
    acc = f["acc"]
    # an accuracy lies in [0, 1]; the t-interval of three seeds near 1 reaches past it
    interval = "n/a (1 seed)" if acc.low is None else \
        f"[{max(acc.low, 0.0):.3f}, {min(acc.high, 1.0):.3f}]"
    flops = _mean_std(f["gflop_per_task"], 3) if row.flops_counted else "not counted"
    ratio = f["compression"]
    return [row.agent, arguments_text(row.arguments, row.eval_every), _mean_std(acc, 3),
            interval,
            _mean_std(f["bwt"], 3), _mean_std(f["forgetting"], 3),
            _mean_std(f["fwt"], 3, "not measured"), _mean_std(f["bytes"], 0),
            "n/a" if ratio is None else f"{ratio.mean:.2f}x", flops,
            _mean_std(f["seconds_per_task"], 3), row.devices,
            ",".join(str(s) for s in row.seeds), "★" if row.pareto else ""]


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c in ("agent", "arguments", "device") else "---:"
                            for c in COLUMNS) + "|"]
    for row in rows:
        cells = [cell.replace("|", "\\|") for cell in row_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex(rows: Sequence[Row]) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
               "$": r"\$", "{": r"\{", "}": r"\}", "±": r"$\pm$", "★": r"$\star$"}

    def escape(text: str) -> str:
        return "".join(special.get(char, char) for char in text)

    head = r"\begin{tabular}{ll" + "r" * (len(COLUMNS) - 2) + "}"
    lines = [head, r"\toprule", " & ".join(escape(c) for c in COLUMNS) + r" \\", r"\midrule"]
    for row in rows:
        lines.append(" & ".join(escape(cell) for cell in row_cells(row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def csv_text(rows: Sequence[Row]) -> str:
    """Machine-readable: one column per statistic (mean, std, CI bounds) of every figure."""
    names = list(FIGURES)
    header = ["stream", "agent", "arguments", "eval_every", "device", "seeds", "flops_counted",
              "pareto"]
    for name in names:
        header += [f"{name}_mean", f"{name}_std", f"{name}_ci95_low", f"{name}_ci95_high"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        line = [row.section, row.agent, json.dumps(row.arguments, sort_keys=True),
                row.eval_every, row.devices, " ".join(str(s) for s in row.seeds),
                row.flops_counted, row.pareto]
        for name in names:
            s = row.figures[name]
            line += ["" if s is None or v is None else repr(v)
                     for v in ((None,) * 4 if s is None else (s.mean, s.std, s.low, s.high))]
        writer.writerow(line)
    return buffer.getvalue().rstrip("\n")


def render(rows: Sequence[Row], fmt: str) -> str:
    """Rows in ``fmt`` (md, csv or latex), Markdown and LaTeX with one table per stream."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return csv_text(rows)
    table = markdown if fmt == "md" else latex
    sections = list(dict.fromkeys(row.section for row in rows))
    parts = []
    for section in sections:
        title = f"### {section}" if fmt == "md" else f"% {section}"
        parts.append(title + "\n\n" + table([r for r in rows if r.section == section]))
    return "\n\n".join(parts)
