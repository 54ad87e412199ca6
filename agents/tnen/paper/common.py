"""What every paper experiment shares: sizes, presets, output files, statistics and plots.

Each experiment module (``robustness``, ``batch``, ``continual``, ``split``, ``mixed``)
defines ``NAME``, ``TITLE``, ``SIZES`` (one settings dict per size: ``tiny`` for the tests,
``reduced`` for the committed offline run on mnist5k, ``full`` for the paper's sizes on the
full datasets), ``run(size, seed, device, data_root) -> figures``, ``render(records,
folder) -> Markdown`` (which also draws the plots) and ``claims(records) -> rows`` for the
summary (``verdicts.py``). A *record* is the JSON file one seed of an experiment writes:
a header (experiment, size, seed, settings, versions, timings) plus its ``figures``.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.tnen import TNEN
from agents.tnen.paper.verdicts import pct
from agents.tnen.task_network import accuracy
from clbench.data import DatasetNotFoundError, load_dataset
from clbench.results import write_json_atomic

SCHEMA = "clbench.paper/2"
SIZE_NAMES = ("tiny", "reduced", "full")
PRESET_NAMES = ("paper", "default")
PRESET_COLORS = {"paper": "tab:orange", "default": "tab:blue"}
# mnist5k has a fifteenth of MNIST's examples: at reduced size the paper preset trains a TN
# for a fixed 45 epochs instead of 3, about the SGD steps of the authors' 3 epochs.
PAPER_ON_MNIST5K = {"epochs": 45}  # a recipe override (clbench.recipe)
PAPER_ON_MNIST5K_NOTE = ("On mnist5k the paper preset trains every TN for a fixed 45 epochs "
                         "instead of the authors' 3 (still on all training data, no early "
                         "stop): a one-vs-rest task has about 1,000 training examples there "
                         "against about 15,000 in MNIST, and 45 epochs of batch 64 take about "
                         "the ~700 SGD steps of their 3 epochs.")
# At reduced size on a shared 2-core CPU, the paper preset's CAE is shrunk: n a quarter of
# 21,432 (4 chunks per network) and 200 hidden units instead of 2,000, 2.16M parameters
# instead of 85.8M (an Adam step of the full CAE takes seconds there).
PAPER_SMALL_EN = {"chunk_size": 5358, "hidden_sizes": [200]}
PAPER_SMALL_EN_NOTE = ("At `reduced` size the paper preset's CAE is shrunk to "
                       "5,358 -> 200 -> 20 -> 200 -> 5,358 (2.16M parameters instead of 85.8M; "
                       "each network is 4 chunks): one of its iterations is one Adam step per "
                       "stored network, and an Adam step of the full CAE takes seconds on the "
                       "shared 2-core CPU these records were made on. ")
# The tiny size (tests): one epoch per TN, a few EN iterations, a small paper-preset CAE.
TINY_EN = {"epochs": 1, "en_max_steps": 4, "en_check_every": 2}
TINY_OVERRIDES = {"paper": {**TINY_EN, "chunk_size": 1000, "hidden_sizes": [32]},
                  "default": TINY_EN}


def settings_for(sizes: dict[str, dict[str, Any]], size: str) -> dict[str, Any]:
    """The settings of ``size``; a clear error lists the sizes otherwise."""
    if size not in sizes:
        raise ValueError(f"size={size!r}: choose one of {', '.join(sizes)}")
    return dict(sizes[size])


def dataset_present(name: str, data_root: str | None) -> bool:
    """Whether ``name`` can be loaded (from disk, or downloaded where the network allows)."""
    try:
        load_dataset(name, train=True, root=data_root)
    except DatasetNotFoundError:
        return False
    return True


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (population), min and max of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()),
            "min": float(array.min()), "max": float(array.max())}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties)."""
    def ranks(values):
        array = np.asarray(values, dtype=np.float64)
        order = np.argsort(array, kind="stable")
        rank = np.empty(len(array))
        rank[order] = np.arange(len(array))
        for value in np.unique(array):  # ties share their mean rank
            tied = array == value
            rank[tied] = rank[tied].mean()
        return rank

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def log(message: str) -> None:
    """A progress line on stderr (experiments run for minutes)."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


class Stopwatch:
    """Seconds spent inside ``with watch:`` blocks, summed (training time without checks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start


# ---------------------------------------------------------------------------- records
def make_record(name: str, size: str, seed: int, device: str, settings: dict[str, Any],
                run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run an experiment's ``run`` and wrap its figures in the record header."""
    from clbench.harness import git_commit, versions

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    figures = run()
    return {
        "schema": SCHEMA, "experiment": name, "size": size, "seed": seed, "device": device,
        "settings": settings, "versions": versions(), "git_commit": git_commit(),
        "started_at": started, "wall_seconds": time.perf_counter() - clock,
        "torch_threads": torch.get_num_threads(), "figures": _plain(figures),
    }


def _plain(value: Any) -> Any:
    """Figures as plain JSON: floats to 6 significant digits (the files stay small and
    readable), NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _plain(value.item())
    return value


def record_name(experiment: str, seed: int) -> str:
    return f"{experiment}-seed{seed}.json"


def save_record(folder: Path, record: dict[str, Any]) -> Path:
    return write_json_atomic(Path(folder) / record_name(record["experiment"], record["seed"]),
                             record)


def load_records(folder: Path, experiment: str) -> list[dict[str, Any]]:
    """Every seed's record of ``experiment`` in ``folder``, by seed; they must share size
    and settings (seeds of one configuration)."""
    records = sorted((load_record(path) for path in Path(folder).glob(f"{experiment}-seed*.json")),
                     key=lambda record: record["seed"])
    for record in records[1:]:
        for key in ("size", "settings"):
            if record[key] != records[0][key]:
                raise ValueError(f"{folder}: the seeds of {experiment} differ in {key!r}; rerun "
                                 f"`clbench paper {experiment} --seeds ...` for all of them")
    return records


def load_record(path: Path) -> dict[str, Any]:
    """Read an experiment's JSON; reject files that are not clbench paper records."""
    try:
        record = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a clbench paper record (schema {SCHEMA!r} expected)")
    return validate_record(record, path)


def validate_record(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """The fields every report section reads: a :class:`ValueError` names the file and the
    missing part (e.g. a record whose ``figures`` is ``{}``) instead of a KeyError later."""
    rerun = f"rerun `clbench paper {record.get('experiment', '<experiment>')}`"
    for key in ("experiment", "size", "settings", "figures"):
        if key not in record:
            raise ValueError(f"{path}: field {key!r} is missing; {rerun}")
    figures = record["figures"]
    if not isinstance(figures, dict):
        raise ValueError(f"{path}: field 'figures' is a {type(figures).__name__}, not an "
                         f"object; {rerun}")
    for preset in PRESET_NAMES:
        if not isinstance(figures.get(preset), dict) or not figures[preset]:
            raise ValueError(f"{path}: field 'figures' has no results for preset {preset!r}; "
                             f"{rerun}")
    return record


# ---------------------------------------------------------------------------- formatting
def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def size_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def gflop(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one letter per column (l or r, default: first l)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- plots
def figure(n_panels: int = 1, width: float = 5.0, height: float = 3.6):
    """A matplotlib Figure and its axes, drawn with the Agg canvas (no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig, folder: Path, filename: str) -> str:
    """Write ``fig`` as a PNG into ``folder``; return the file name for Markdown links."""
    fig.savefig(Path(folder) / filename, dpi=110)
    return filename


# ---------------------------------------------------------------------------- agent runs
def evaluate_preset(preset: str, overrides: dict[str, Any], env_id: str,
                    env_kwargs: dict[str, Any], seed: int, device: str,
                    seal: bool = True) -> dict[str, Any]:
    """Run TN+EN (``preset`` + ``overrides``) through a stream with the harness: accuracy
    matrix, bytes kept after every task, learn FLOPs and seconds, the agent's metrics.
    ``seal=False`` runs the agent in process (at the tiny size, where starting sealed
    workers costs more than the whole run)."""
    from clbench.harness import evaluate

    log(f"TN+EN preset {preset} {overrides or ''} on {env_id} {env_kwargs or ''}")
    agent_kwargs = {"preset": preset, "seed": seed, **overrides}
    result = evaluate("tnen", env_id, seed=seed, device=device, agent_kwargs=agent_kwargs,
                      env_kwargs=env_kwargs, seal=seal)
    if result.status != "complete":
        raise RuntimeError(f"TN+EN preset {preset!r} on {env_id}: {result.error}")
    return {**result.to_dict(), **original_networks(agent_kwargs, env_id, env_kwargs, seed,
                                                    device)}


def original_networks(agent_kwargs: dict[str, Any], env_id: str, env_kwargs: dict[str, Any],
                      seed: int, device: str) -> dict[str, list]:
    """The test accuracy of the fp32 TN that each ``learn`` of that run encoded, and each
    test set's size: the TNs are trained again exactly as the agent trained them (same
    seed, same task data, ``TNEN.task_network``) and scored on the env's test split."""
    import clbench

    env = clbench.make(env_id, device=device, **env_kwargs).unwrapped
    env.reset(seed=seed)
    agent = TNEN(device, **agent_kwargs)
    accuracies, sizes = [], []
    for task_id in range(env.n_tasks):
        task = env.task(task_id)
        net, _ = agent.task_network(task.for_agent())
        accuracies.append(accuracy(net, task.x_test, task.y_test, task.dataset))
        sizes.append(len(task.y_test))
    env.close()
    return {"tn_test_accuracy": accuracies, "n_test": sizes}


def stream_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per task: EN iterations, backprop calls (TN + EN), learn FLOPs and seconds, bytes."""
    agent = result["agent_metrics"]
    return {
        "skills": list(range(1, len(agent) + 1)),
        "en_iterations": [m["en_iterations"] for m in agent],
        "tn_backprop_calls": [m["tn_backprop_calls"] for m in agent],
        "backprop_calls": [m["tn_backprop_calls"] + m["en_backprop_calls"] for m in agent],
        "rule_met": [m["stopping_rule_met"] for m in agent],
        "learn_flops": result["costs"]["learn_flops"],
        "learn_seconds": result["costs"]["learn_seconds"],
        "bytes": result["storage"]["bytes"],
        # one fp32 copy of every TN so far, whatever its architecture
        "fp32_bytes": np.cumsum([4 * m["tn_parameters"] for m in agent]).tolist(),
    }


def stream_section(preset: str, result: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per task of a harness run (accuracies, cost, bytes)."""
    s = stream_summary(result)
    rows = [[i + 1, " ".join(f"{100 * a:.1f}" for a in row), pct(sum(row) / len(row)),
             s["en_iterations"][i], s["backprop_calls"][i],
             "yes" if s["rule_met"][i] else "no (cap)", gflop(s["learn_flops"][i]),
             f"{s['learn_seconds'][i]:.1f}", size_bytes(s["bytes"][i]),
             size_bytes(s["fp32_bytes"][i])]
            for i, row in enumerate(result["accuracy"])]
    metrics = result["metrics"]
    return [f"Preset `{preset}`" + (f" with {overrides}" if overrides else "") + ":", "",
            table(["skills", "test accuracy of every skill (%)", "mean", "EN iterations",
                   "backprop calls", "rule met", "learn GFLOP", "learn s", "bytes kept",
                   "fp32 networks"], rows), "",
            f"ACC {pct(metrics['acc'])}, BWT {pct(metrics['bwt'])}, "
            f"forgetting {pct(metrics['forgetting'])}.", ""]


def plot_stream_accuracy(figures: dict[str, Any], panels: Sequence[tuple[str, dict[str, int]]],
                         folder: Path, filename: str, xlabel: str) -> str:
    """Bars per panel ``(title, {preset: k})``: the test accuracy of every stored skill after
    ``k`` skills of that preset's run; black ticks: the test accuracy of the fp32 TN each
    skill was encoded from."""
    fig, axes = figure(len(panels), width=3.6)
    for ax, (title, rows) in zip(axes, panels, strict=True):
        width = 0.8 / len(rows)
        for index, (preset, k) in enumerate(rows.items()):
            result = figures[preset]["result"]
            offset = (index - (len(rows) - 1) / 2) * width
            xs = [j + offset for j in range(k)]
            ax.bar(xs, result["accuracy"][k - 1], width=width, color=PRESET_COLORS[preset],
                   label=preset)
            ax.scatter(xs, result["tn_test_accuracy"][:k], marker="_", s=80, color="black",
                       zorder=3)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(max(rows.values())))
        ax.set_xlabel(xlabel)
        lowest = min(min(figures[p]["result"]["accuracy"][k - 1]) for p, k in rows.items())
        ax.set_ylim(min(0.5, lowest - 0.05), 1.0)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("test accuracy of the reconstruction\n(black: the fp32 TN's)")
    return save_figure(fig, folder, filename)


def plot_stream_costs(figures: dict[str, Any], folder: Path, filename: str) -> str:
    """EN iterations, backprop calls, learn FLOPs and bytes kept against skills stored."""
    from matplotlib.ticker import MaxNLocator

    panels = (("en_iterations", "EN iterations"), ("backprop_calls", "backprop calls (TN + EN)"),
              ("learn_flops", "learn GFLOP"), ("bytes", "bytes kept"))
    fig, axes = figure(len(panels), width=3.6)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for preset in PRESET_NAMES:
            s = stream_summary(figures[preset]["result"])
            values = [v / 1e9 for v in s[key]] if key == "learn_flops" else s[key]
            ax.plot(s["skills"], values, marker="o", color=PRESET_COLORS[preset], label=preset)
        if key == "bytes":  # the longest run's networks
            s = max((stream_summary(figures[p]["result"]) for p in PRESET_NAMES),
                    key=lambda summary: len(summary["skills"]))
            ax.plot(s["skills"], s["fp32_bytes"], color="gray", linestyle="--",
                    label="fp32 networks")
            ax.plot(s["skills"], [b / 4 for b in s["fp32_bytes"]], color="gray", linestyle=":",
                    label="int8 networks")
        if key in ("bytes", "learn_flops"):
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("skills stored")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return save_figure(fig, folder, filename)
