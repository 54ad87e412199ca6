"""What the speed benchmarks share: the streams they train on, interleaved timing, tables.

Every comparison is measured side by side in one process: the variants run in turn, round
after round, and each reports the median of its rounds, so load on the machine shifts them
together and their ratio is what to read.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import gymnasium

import clbench  # noqa: F401  (registers the environments)
from clbench.data.sources import DatasetNotFoundError
from clbench.harness import cpu_model, usable_cores
from clbench.tasks import Task

OFFLINE_STREAM = "clbench/SplitMNIST5k-v0"
FASHION_STREAM = "clbench/SplitFashionMNIST-v0"


def stream_tasks(env_id: str, seed: int = 0, **env_kwargs) -> list[Task] | None:
    """Every task of ``env_id`` for ``seed`` (with test splits), or None where its data is
    not installed (the Fashion-MNIST stream needs the Debian files or a download)."""
    env = gymnasium.make(env_id, **env_kwargs).unwrapped
    try:
        env.reset(seed=seed)
        return [env.task(i) for i in range(env.n_tasks)]
    except DatasetNotFoundError:
        return None


def host() -> str:
    """The CPU this benchmark runs on and the cores it may use: timings from different sessions
    compare only on the same host (result files record theirs in ``hosts``)."""
    return f"{cpu_model()}, {usable_cores()} cores usable"


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each call, ``rounds`` times, the calls taking turns within a round."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table: the first column left-aligned, the figures right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
