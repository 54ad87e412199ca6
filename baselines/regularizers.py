"""What the shared-trunk regularisation and memory baselines have in common.

EWC, online EWC, SI, LwF and A-GEM are naive fine-tuning (``baselines/naive.py``: shared
trunk, one 2-way head per task, the shared recipe of :mod:`clbench.recipe`) plus one change
to each step, plugged into the recipe's loop through its hooks: a penalty's gradient, a
distillation term, or a projection of the gradient. This module holds the parts they share,
so each baseline's file shows only what its method adds:

- :class:`SharedTrunkAgent`: naive plus the named attributes a method keeps between tasks
  (``STATE_KEYS``), saved in and restored from the state, and the start of every task
  (input-shape check, a new head);
- :func:`trunk_vector` / :func:`split_like`: the trunk's parameters as one flat vector (how
  importances and anchors are stored) and back to per-parameter views;
- :class:`QuadraticPenalty`: ``scale * sum_i importance_i * (theta_i - anchor_i)^2`` over the
  trunk, the penalty of EWC, online EWC and SI.

EWC, online EWC and SI regularise only the trunk: with them, a head receives no gradient
after its own task (each task's loss reaches only its own head, and the optimiser is rebuilt
per task), so it never moves and a penalty on it would be identically zero. Importances and
anchors therefore have the trunk's size, not the whole net's. In the domain-incremental
scenario (one head shared by every task, ``clbench.nets.MultiHeadNet(shared_head=True)``)
that head does keep training and is still not penalised: a deviation from van de Ven &
Tolias (2019), who penalise every parameter there (102 of the MNIST net's 21,432).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from baselines.common import require_input_shape
from baselines.naive import Naive
from clbench.nets import MultiHeadNet
from clbench.tasks import Task


class SharedTrunkAgent(Naive):
    """Naive's net, heads and prediction, plus the attributes named in ``STATE_KEYS``.

    Those attributes (tensors, dicts of tensors, or plain values) are what the method keeps
    between tasks besides the net; they go into the state once a task has been learnt and
    come back, with tensors moved to the agent's device, on loading.
    """

    STATE_KEYS: tuple[str, ...] = ()

    def _start_task(self, task: Task) -> MultiHeadNet:
        """The net, with a new head for ``task`` (whose dataset is recorded)."""
        if self.net is not None:
            require_input_shape(self.net.input_shape, task, type(self).__name__)
        net = self._ensure_net(task.input_shape, task.scenario)
        net.add_head()
        self.datasets.append(task.dataset)
        return net

    def _require_finite(self, task: Task, setting: str) -> None:
        """Stop with a clear error if training on ``task`` diverged (NaN or inf weights).

        A quadratic penalty whose curvature (strength times importance) exceeds what SGD's
        step size can follow makes the weights oscillate and overflow.
        """
        if not all(bool(torch.isfinite(p).all()) for p in self.net.parameters()):
            raise FloatingPointError(
                f"{type(self).__name__}: training diverged on task {task.id} ({task.name}) with "
                f"{setting} and lr={self.recipe.lr}; lower the penalty strength (or lr)")

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.datasets:
            state.update({key: getattr(self, key) for key in self.STATE_KEYS})
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.datasets:
            missing = [key for key in self.STATE_KEYS if key not in state]
            if missing:
                raise KeyError(f"{type(self).__name__}: the state lacks {', '.join(missing)}; "
                               "was it saved by another agent?")
            for key in self.STATE_KEYS:
                setattr(self, key, on_device(state[key], self.device))


def on_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (also inside dicts) moved to ``device``."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: on_device(item, device) for key, item in value.items()}
    return value


def trunk_vector(net: nn.Module) -> torch.Tensor:
    """A detached flat copy of ``net.trunk``'s parameters, in ``parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.trunk.parameters()])


def split_like(vector: torch.Tensor, parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat ``vector`` shaped like ``parameters`` (the inverse of a flatten)."""
    if vector.numel() != sum(p.numel() for p in parameters):
        raise ValueError(f"a vector of {vector.numel()} values does not match parameters of "
                         f"{sum(p.numel() for p in parameters)} values; was the state saved "
                         "for another net?")
    pieces = torch.split(vector, [p.numel() for p in parameters])
    return [piece.view_as(p) for piece, p in zip(pieces, parameters, strict=True)]


class QuadraticPenalty:
    """``scale * sum_i importance_i * (theta_i - anchor_i)^2 + offset`` over ``parameters``.

    ``importance`` and ``anchor`` are flat vectors in the order of ``parameters``; ``offset``
    is a constant that only shifts the value (offline EWC's merged penalty needs it). Training
    never builds an autograd graph for the penalty: :meth:`add_gradient` adds its exact
    gradient ``2 * scale * importance * (theta - anchor)`` to each ``.grad`` with fused
    ``torch._foreach`` ops after the task loss's ``backward``. That is the cheapest form we
    measured (about 1% of a step on the MNIST net, against 3-5% for the penalty built into
    the loss), and it leaves the task loss's own gradient readable before it (SI needs it).
    """

    def __init__(
        self,
        parameters: Sequence[nn.Parameter],
        importance: torch.Tensor,
        anchor: torch.Tensor,
        scale: float,
        offset: float = 0.0,
    ) -> None:
        self.parameters = list(parameters)
        self.importance = split_like(importance, self.parameters)
        self.anchor = split_like(anchor, self.parameters)
        self.scale, self.offset = float(scale), float(offset)

    def value(self) -> torch.Tensor:
        """The penalty at the current parameters (differentiable; for tests and reports)."""
        total = sum((w * (p - a).pow(2)).sum()
                    for p, w, a in zip(self.parameters, self.importance, self.anchor, strict=True))
        return self.scale * total + self.offset

    @torch.no_grad()
    def add_gradient(self) -> None:
        """``p.grad += d penalty / d p`` for every parameter (call after ``backward``)."""
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        pull = torch._foreach_sub(self.parameters, self.anchor)
        torch._foreach_mul_(pull, self.importance)
        torch._foreach_add_([p.grad for p in self.parameters], pull, alpha=2.0 * self.scale)
