"""Stream builders: each returns a plain list of :class:`TaskSpec`, so users can write their own.

- :func:`split`: disjoint class pairs 0|1, 2|3, ... (Split MNIST, Split CIFAR-10/100);
- :func:`one_vs_rest`: d | every other class, in class order (the paper's continual experiment);
- :func:`tuples`: n distinct random (positive, negative) tuples (the paper's batch experiment);
- :func:`mixed`: the concatenation of streams over different datasets and input shapes.
"""

from __future__ import annotations

import numpy as np

from clbench.data import dataset_info
from clbench.tasks.spec import TaskSpec


def _class_order(n_classes: int, seed: int | None) -> list[int]:
    if seed is None:
        return list(range(n_classes))
    return [int(c) for c in np.random.default_rng(seed).permutation(n_classes)]


def _check_count(n_tasks: int | None, available: int, builder: str) -> int:
    if n_tasks is None:
        return available
    if not 1 <= n_tasks <= available:
        raise ValueError(f"{builder}: n_tasks={n_tasks} is out of range; this dataset has 1 to "
                         f"{available} such tasks")
    return n_tasks


def split(dataset: str, n_tasks: int | None = None, seed: int | None = None) -> list[TaskSpec]:
    """Disjoint class pairs (c0 | c1), (c2 | c3), ...; ``seed`` shuffles the class order."""
    order = _class_order(dataset_info(dataset).n_classes, seed)
    n = _check_count(n_tasks, len(order) // 2, "split")
    return [TaskSpec(dataset, (order[2 * i],), (order[2 * i + 1],)) for i in range(n)]


def one_vs_rest(
    dataset: str, n_tasks: int | None = None, seed: int | None = None
) -> list[TaskSpec]:
    """Class d against all other classes, for d in class order (or a seeded order)."""
    n_classes = dataset_info(dataset).n_classes
    order = _class_order(n_classes, seed)
    n = _check_count(n_tasks, n_classes, "one_vs_rest")
    return [
        TaskSpec(dataset, (d,), tuple(c for c in range(n_classes) if c != d)) for d in order[:n]
    ]


def tuples(
    dataset: str, n_tasks: int, seed: int = 0, max_classes_per_side: int = 3
) -> list[TaskSpec]:
    """``n_tasks`` distinct random tasks (positive set, negative set), each side 1 to
    ``max_classes_per_side`` distinct classes, the sides disjoint (e.g. ``mnist:1|2,3``)."""
    n_classes = dataset_info(dataset).n_classes
    if not 1 <= max_classes_per_side <= n_classes // 2:
        raise ValueError(f"tuples: max_classes_per_side={max_classes_per_side} must be in "
                         f"[1, {n_classes // 2}] for {dataset}")
    if n_tasks < 1:
        raise ValueError(f"tuples: n_tasks={n_tasks} must be at least 1")
    rng = np.random.default_rng(seed)
    specs: dict[str, TaskSpec] = {}
    attempts = 0
    while len(specs) < n_tasks:
        attempts += 1
        if attempts > 100 * n_tasks + 1000:
            raise ValueError(f"tuples: could not draw {n_tasks} distinct tasks from {dataset} "
                             f"with at most {max_classes_per_side} classes per side")
        n_pos, n_neg = rng.integers(1, max_classes_per_side + 1, size=2)
        classes = rng.choice(n_classes, size=n_pos + n_neg, replace=False)
        spec = TaskSpec(dataset, tuple(map(int, classes[:n_pos])), tuple(map(int, classes[n_pos:])))
        specs.setdefault(spec.name, spec)
    return list(specs.values())


def mixed(*streams: list[TaskSpec]) -> list[TaskSpec]:
    """Concatenate streams, e.g. ``mixed(one_vs_rest("mnist", 5), one_vs_rest("cifar10", 1))``."""
    return [spec for stream in streams for spec in stream]


STREAMS = {"split": split, "one_vs_rest": one_vs_rest, "tuples": tuples}
