"""Small pieces several baselines share: SGD on one task's data, and the input-shape check.

Kept here so that every baseline file reads top to bottom without repeating the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from clbench.tasks import Task
from clbench.training import minibatches, sgd


def train_on_task(
    model: Callable[[torch.Tensor], torch.Tensor],
    parameters: Iterable[torch.nn.Parameter],
    task: Task,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
) -> None:
    """``epochs`` of SGD with momentum on ``task``'s training data, cross-entropy on ``model``'s
    2-way logits. A fresh optimiser per task: nothing of it survives between tasks."""
    optimizer = sgd(parameters, lr=lr, momentum=momentum)
    for _ in range(epochs):
        for x, y in minibatches(task.x_train, task.y_train, task.dataset, batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


def require_input_shape(expected: tuple[int, ...], task: Task, method: str) -> None:
    """Methods whose tasks share one network need every task to have the same input shape."""
    if tuple(task.input_shape) != tuple(expected):
        raise ValueError(
            f"{method}: task {task.id} ({task.name}) has input shape {tuple(task.input_shape)} "
            f"but earlier tasks had {tuple(expected)}; {method} shares one network across tasks, "
            "so it needs a stream of one input shape (use 'independent' for mixed streams)"
        )
