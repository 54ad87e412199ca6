"""Stream builders: each returns a plain list of :class:`TaskSpec`, so users can write their own.

- :func:`split`: disjoint class pairs 0|1, 2|3, ... (Split MNIST, Split CIFAR-10/100);
- :func:`one_vs_rest`: d | every other class, in class order (the paper's continual experiment);
- :func:`tuples`: n distinct random (positive, negative) tuples (the paper's batch experiment);
- :func:`mixed`: the concatenation of streams over different datasets and input shapes.

Every builder checks its arguments before any work and raises :class:`ValueError` naming the
bad value and the range allowed (:func:`check_stream` does it for any stream).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np

from clbench.data import dataset_info
from clbench.tasks.spec import TaskSpec


def check_int(value, name: str, low: int, high: int | None = None,
              builder: str = "stream") -> int:
    """``value`` as an int in ``[low, high]``; :class:`ValueError` for anything else (bools,
    floats and strings included), naming the value and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{builder}: {name}={value!r} must be an integer")
    if value < low or (high is not None and value > high):
        allowed = f"{low} to {high:,}" if high is not None else f"at least {low}"
        raise ValueError(f"{builder}: {name}={value} is out of range; allowed: {allowed}")
    return int(value)


def _seed(seed, builder: str) -> int | None:
    return None if seed is None else check_int(seed, "seed", 0, builder=builder)


# The most tasks of a tuple stream on any dataset: every MNIST tuple task (12,990) fits; a
# request for a million CIFAR-100 tuple tasks, drawn by the fuzz tests, ran 15 minutes in
# 9 GB before it was stopped.
MAX_TUPLE_TASKS = 20_000


def max_tuples(n_classes: int, max_classes_per_side: int) -> int:
    """The number of distinct (positive, negative) tasks on ``n_classes`` classes with 1 to
    ``max_classes_per_side`` classes per side, the sides disjoint: sum over the side sizes a,
    b of C(n, a) * C(n - a, b) (12,990 for 10 classes, 3 per side)."""
    sides = range(1, max_classes_per_side + 1)
    return sum(math.comb(n_classes, a) * math.comb(n_classes - a, b) for a in sides for b in sides)


def check_stream(stream: str, dataset: str, n_tasks, max_classes_per_side=3) -> int:
    """The number of tasks ``stream`` builds on ``dataset`` (``n_tasks``, or all when None; 50
    for ``tuples``), checked in microseconds: :class:`ValueError` names an impossible request
    and the most tasks the stream can have."""
    n_classes = dataset_info(dataset).n_classes
    capped = False  # fewer than the classes allow: MAX_TUPLE_TASKS
    if stream == "split":
        available = n_classes // 2
    elif stream == "one_vs_rest":
        available = n_classes
    elif stream == "tuples":
        check_int(max_classes_per_side, "max_classes_per_side", 1, n_classes // 2,
                  f"tuples on {dataset}")
        available = max_tuples(n_classes, max_classes_per_side)
        capped, available = available > MAX_TUPLE_TASKS, min(available, MAX_TUPLE_TASKS)
        n_tasks = 50 if n_tasks is None else n_tasks
    else:
        raise ValueError(f"unknown stream {stream!r}; choose one of {', '.join(STREAMS)}")
    if n_tasks is None:
        return available
    if isinstance(n_tasks, numbers.Integral) and not isinstance(n_tasks, bool) and not (
            1 <= n_tasks <= available):
        if capped:
            raise ValueError(f"tuples: n_tasks={n_tasks} is out of range: a tuple stream has at "
                             f"most {MAX_TUPLE_TASKS:,} tasks (each one a learn of its own; "
                             "a million took minutes and gigabytes to draw)")
        sides = f" with 1 to {max_classes_per_side} classes per side" if stream == "tuples" else ""
        raise ValueError(f"{stream}: n_tasks={n_tasks} is out of range: {dataset}'s {n_classes} "
                         f"classes make at most {available:,} such tasks{sides}")
    return check_int(n_tasks, "n_tasks", 1, available, stream)


def _class_order(n_classes: int, seed: int | None) -> list[int]:
    if seed is None:
        return list(range(n_classes))
    return [int(c) for c in np.random.default_rng(seed).permutation(n_classes)]


def split(dataset: str, n_tasks: int | None = None, seed: int | None = None) -> list[TaskSpec]:
    """Disjoint class pairs (c0 | c1), (c2 | c3), ...; ``seed`` shuffles the class order."""
    n_classes = dataset_info(dataset).n_classes
    n = check_stream("split", dataset, n_tasks)
    order = _class_order(n_classes, _seed(seed, "split"))
    return [TaskSpec(dataset, (order[2 * i],), (order[2 * i + 1],)) for i in range(n)]


def one_vs_rest(
    dataset: str, n_tasks: int | None = None, seed: int | None = None
) -> list[TaskSpec]:
    """Class d against all other classes, for d in class order (or a seeded order)."""
    n_classes = dataset_info(dataset).n_classes
    n = check_stream("one_vs_rest", dataset, n_tasks)
    order = _class_order(n_classes, _seed(seed, "one_vs_rest"))
    return [
        TaskSpec(dataset, (d,), tuple(c for c in range(n_classes) if c != d)) for d in order[:n]
    ]


def tuples(
    dataset: str, n_tasks: int, seed: int = 0, max_classes_per_side: int = 3
) -> list[TaskSpec]:
    """``n_tasks`` distinct random tasks (positive set, negative set), each side 1 to
    ``max_classes_per_side`` distinct classes, the sides disjoint (e.g. ``mnist:1|2,3``).

    ``n_tasks`` may be anything up to :func:`max_tuples` (12,990 on 10 classes with 3 per
    side) and :data:`MAX_TUPLE_TASKS`; more is refused at once. Tasks are drawn at random;
    if the draws keep repeating tasks (``n_tasks`` close to the maximum), the rest are drawn
    from the tasks not yet chosen, so every feasible request ends in seconds.
    """
    n_classes = dataset_info(dataset).n_classes
    if n_tasks is None:
        raise ValueError("tuples: n_tasks=None; give the number of tasks")
    n_tasks = check_stream("tuples", dataset, n_tasks, max_classes_per_side)
    rng = np.random.default_rng(check_int(seed, "seed", 0, builder="tuples"))
    specs: dict[str, TaskSpec] = {}
    attempts = 0
    while len(specs) < n_tasks:
        attempts += 1
        if attempts > 10 * n_tasks + 1000:
            return _complete_tuples(dataset, n_classes, max_classes_per_side, specs, n_tasks,
                                    rng)
        n_pos, n_neg = rng.integers(1, max_classes_per_side + 1, size=2)
        classes = rng.choice(n_classes, size=n_pos + n_neg, replace=False)
        spec = TaskSpec(dataset, tuple(map(int, classes[:n_pos])), tuple(map(int, classes[n_pos:])))
        specs.setdefault(spec.name, spec)
    return list(specs.values())


def _complete_tuples(dataset: str, n_classes: int, max_classes_per_side: int,
                     specs: dict[str, TaskSpec], n_tasks: int,
                     rng: np.random.Generator) -> list[TaskSpec]:
    """``specs`` plus tasks drawn without replacement from every task not in it."""
    sides = range(1, max_classes_per_side + 1)
    rest = [
        (positive, negative)
        for a in sides for positive in itertools.combinations(range(n_classes), a)
        for b in sides
        for negative in itertools.combinations(
            [c for c in range(n_classes) if c not in positive], b)
    ]
    rest = [pair for pair in rest if TaskSpec(dataset, *pair).name not in specs]
    chosen = rng.choice(len(rest), size=n_tasks - len(specs), replace=False)
    return [*specs.values(), *(TaskSpec(dataset, *rest[i]) for i in chosen)]


def mixed(*streams: list[TaskSpec]) -> list[TaskSpec]:
    """Concatenate streams, e.g. ``mixed(one_vs_rest("mnist", 5), one_vs_rest("cifar10", 1))``."""
    return [spec for stream in streams for spec in stream]


STREAMS = {"split": split, "one_vs_rest": one_vs_rest, "tuples": tuples}


def stream_specs(stream: str, dataset: str, tasks: Sequence[str | TaskSpec] | None,
                 n_tasks: int | None) -> list[TaskSpec] | None:
    """A stream's task specs, known before any data is read: the ``tasks`` given, else the
    ones ``stream`` builds on ``dataset``; None for ``tuples``, whose tasks the seed draws."""
    if tasks is not None:
        return [task if isinstance(task, TaskSpec) else TaskSpec.from_name(task)
                for task in tasks]
    return None if stream == "tuples" else STREAMS[stream](dataset, n_tasks)
