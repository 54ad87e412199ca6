"""The input-shape check of the baselines that share one network across tasks."""

from __future__ import annotations

from clbench.tasks import Task


def require_input_shape(expected: tuple[int, ...], task: Task, method: str) -> None:
    """Methods whose tasks share one network need every task to have the same input shape."""
    if tuple(task.input_shape) != tuple(expected):
        raise ValueError(
            f"{method}: task {task.id} ({task.name}) has input shape {tuple(task.input_shape)} "
            f"but earlier tasks had {tuple(expected)}; {method} shares one network across tasks, "
            "so it needs a stream of one input shape (use 'independent' for mixed streams)"
        )
