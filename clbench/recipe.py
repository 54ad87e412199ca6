"""One training recipe for every agent that trains a task network, and the loop that runs it.

Comparisons between continual-learning methods are only fair when every method trains its
networks with the same budget. :class:`Recipe` is that budget: optimiser, learning rate,
momentum, batch size, the most epochs, and the held-out early-stopping rule. :data:`DEFAULT`
is the one default every baseline uses (naive, independent, joint, EWC, online EWC, SI,
LwF, A-GEM, replay, PNN, linear) and TN+EN's default preset trains its task networks with
(its paper preset uses the authors' recipe, ``agents/tnen/presets.py``); an agent's recipe
overrides are explicit agent arguments (``lr=``, ``epochs=``, ... recorded in a result's
``agent["kwargs"]``), and each agent reports its resolved recipe in ``metrics()``
(``result.agent_metrics[t]["recipe"]``), so every table can show the recipe a number was
trained with.

:func:`train` is the loop. What a method adds plugs in through small hooks, so each
baseline stays one readable file:

- ``loss(x, y)``: the loss of one minibatch (default: cross-entropy of ``model(x)``),
  e.g. plus a distillation term (LwF) or computed on the batch joined by replayed
  examples (replay);
- ``before_step()``: runs after ``backward`` and before the optimiser's step, to edit the
  gradients (EWC/SI add their penalty's gradient, A-GEM projects them, SI reads the task
  loss's own gradient first);
- ``after_step()``: runs after each step (SI's path integral).

Early stopping (``holdout_fraction > 0``): that share of the examples is held out (seeded
by the generator, class-stratified on the labels), the rest is trained on; after every epoch
``model`` scores the held-out part, and an epoch *improves* when its held-out accuracy is
higher than the best so far, or equal with a lower held-out cross-entropy. Training stops
once no epoch has improved for ``patience`` epochs, or after ``epochs``; the parameters are
then restored to the best epoch's. The loss breaks ties because a held-out part of ~100
examples moves in steps of 1%: on accuracy alone, a net still at the majority-class plateau
(60% on the paper's one-vs-rest tasks) or already at 100% looks unchanged while it is still
learning, and a patience of a few epochs stopped such a net at the plateau (measured with
lr 0.05, momentum 0.9: one task of ten on OneVsRestMNIST5k seed 0 kept at 0.60). With
``holdout_fraction = 0`` every example is trained on for exactly ``epochs`` epochs.

For TN+EN's task networks (or any agent of one network per task) the whole use is::

    from clbench.recipe import DEFAULT, train
    log = train(net, net.parameters(), task.x_train, task.y_train, DEFAULT,
                dataset=task.dataset, generator=generator)
    log.train_index, log.holdout_index   # which examples were trained on / held out
    log.holdout_accuracy, log.epochs, log.steps

and ``DEFAULT.replace(lr=...)`` gives a recipe with overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clbench import progress
from clbench.data import normalize
from clbench.training import fast_layout, normalized, sgd

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a task network is trained (module docstring). ``momentum`` is SGD's; Adam uses
    its own defaults (betas 0.9, 0.999) and ignores it."""

    optimizer: str
    lr: float
    momentum: float
    batch_size: int
    epochs: int
    holdout_fraction: float
    patience: int

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: choose one of "
                             f"{', '.join(OPTIMIZERS)}")
        checks = (
            ("lr", self.lr > 0, "must be > 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("batch_size", _whole(self.batch_size) and self.batch_size >= 1,
             "must be a whole number >= 1"),
            ("epochs", _whole(self.epochs) and self.epochs >= 0,
             "must be a whole number >= 0 (0: keep the initial weights)"),
            ("holdout_fraction", 0 <= self.holdout_fraction < 1,
             "must be in [0, 1) (0: no early stopping)"),
            ("patience", _whole(self.patience) and self.patience >= 1,
             "must be a whole number >= 1"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {rule}")

    def replace(self, **overrides: Any) -> Recipe:
        """This recipe with ``overrides`` (``None`` values keep this recipe's value)."""
        unknown = sorted(set(overrides) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown recipe argument(s) {', '.join(unknown)}; a recipe has "
                            f"{', '.join(FIELDS)}")
        given = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **given)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FIELDS = tuple(field.name for field in dataclasses.fields(Recipe))

# The shared default, chosen on validation data. lr: over every agent that trains with this
# recipe, on two streams (OneVsRestMNIST5k, SplitMNIST5k), each agent at its own best setting
# for each lr (`clbench select`, leaderboard/tuning/shared_lr.json, from the per-agent records
# in leaderboard/tuning/onevsrest/ and split/): on `independent` alone 0.05 wins by a hair,
# and under it a shared trunk trained by SGD (naive and every method built on it) is unstable.
# momentum and patience: the best at that lr of the recipe's own grids on `independent`
# (lr x momentum x patience, a reduced 5-task stream, leaderboard/tuning/recipe.json, and the
# full 10-task one, leaderboard/tuning/recipe_full.json). Not tuned: the rest, TN+EN's own TN
# settings (SGD, batch 64, at most 20 epochs) and a 10% hold-out.
DEFAULT = Recipe(
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    batch_size=64,
    epochs=20,
    holdout_fraction=0.1,
    patience=10,
)


class TrainingLog(NamedTuple):
    """What one call of :func:`train` did: examples trained on and held out (indices into the
    given examples), epochs run, optimiser steps, the epoch whose weights were kept
    (1-based) and its held-out accuracy (``None`` without early stopping)."""

    train_index: torch.Tensor
    holdout_index: torch.Tensor
    epochs: int
    steps: int
    best_epoch: int
    holdout_accuracy: float | None

    def summary(self) -> dict[str, Any]:
        """The plain figures (for an agent's ``metrics()``)."""
        return {"epochs_trained": self.epochs, "best_epoch": self.best_epoch,
                "holdout_accuracy": self.holdout_accuracy}


def recipe_metrics(recipe: Recipe, log: TrainingLog | None) -> dict[str, Any]:
    """The resolved recipe and what the last ``learn`` did, for an agent's ``metrics()``
    (the harness records them per task in ``result.agent_metrics``)."""
    return {"recipe": recipe.as_dict(), **(log.summary() if log is not None else {})}


def stratified_holdout(labels: torch.Tensor, fraction: float,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): ``round(fraction * n_c)`` random examples of each
    label c are held out (at least one where ``fraction > 0`` and the label has two or
    more examples, never all of them). Indices are sorted, on ``labels``' device."""
    held = []
    for label in torch.unique(labels.cpu()).tolist():
        members = torch.nonzero(labels.cpu() == label).flatten()
        count = round(fraction * len(members))
        if fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    held_index = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_index] = False
    device = labels.device
    return torch.nonzero(keep).flatten().to(device), held_index.to(device)


def make_optimizer(parameters: Iterable[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """A fresh optimiser per call: nothing of it survives between tasks."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=recipe.lr)
    return sgd(parameters, lr=recipe.lr, momentum=recipe.momentum)


@torch.no_grad()
def holdout_score(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                  labels: torch.Tensor, dataset: str | None,
                  batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``inputs``."""
    correct, loss = 0, 0.0
    for start in range(0, len(labels), batch_size):
        x = inputs[start : start + batch_size]
        x = fast_layout(normalize(x, dataset)) if dataset is not None else x
        y = labels[start : start + batch_size]
        logits = model(x)
        correct += int((logits.argmax(dim=1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    return correct / len(labels), loss / len(labels)


def train(
    model: Callable[[torch.Tensor], torch.Tensor],
    parameters: Iterable[nn.Parameter],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    *,
    dataset: str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    generator: torch.Generator | None = None,
) -> TrainingLog:
    """Train ``parameters`` on ``(inputs, labels)`` with ``recipe`` (module docstring).

    ``model`` maps a minibatch of inputs to 2-way logits; it scores the held-out examples
    and, without ``loss``, gives the loss ``cross_entropy(model(x), y)``. With ``dataset``,
    ``inputs`` are uint8 images normalised per minibatch for that dataset; without, they are
    handed to ``model`` and ``loss`` as they are (e.g. indices of stored examples). Each
    epoch visits the trained examples in a new random order (``generator``, else torch's
    global generator, which the harness seeds before every ``learn``).
    """
    parameters = list(parameters)
    compute_loss = loss or (lambda x, y: F.cross_entropy(model(x), y))
    if recipe.holdout_fraction > 0:
        train_index, holdout_index = stratified_holdout(labels, recipe.holdout_fraction,
                                                        generator)
    else:
        train_index = torch.arange(len(labels), device=labels.device)
        holdout_index = train_index[:0]
    early_stopping = len(holdout_index) > 0
    held_inputs, held_labels = inputs[holdout_index], labels[holdout_index]
    # uint8 images are normalised once per task (clbench.training.normalized), not per batch
    source = normalized(inputs, dataset) if dataset is not None else inputs
    optimizer = make_optimizer(parameters, recipe)
    best, best_epoch, best_weights, steps, epoch = None, 0, None, 0, 0
    while epoch < recipe.epochs:
        order = train_index[torch.randperm(len(train_index), generator=generator)
                            .to(train_index.device)]
        for start in range(0, len(order), recipe.batch_size):
            index = order[start : start + recipe.batch_size]
            x = source.index_select(0, index)
            x = fast_layout(x) if dataset is not None else x
            optimizer.zero_grad(set_to_none=True)
            compute_loss(x, labels.index_select(0, index)).backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            if after_step is not None:
                after_step()
            steps += 1
            progress.advance()
        epoch += 1
        if not early_stopping:
            continue
        accuracy, loss_value = holdout_score(model, held_inputs, held_labels, dataset)
        if best is None or (accuracy, -loss_value) > best:
            best, best_epoch, best_weights = (accuracy, -loss_value), epoch, _snapshot(parameters)
        elif epoch - best_epoch >= recipe.patience:
            break
    if best_weights is not None:
        _restore(parameters, best_weights)
    else:
        best_epoch = epoch
    return TrainingLog(train_index, holdout_index, epoch, steps, best_epoch,
                       None if best is None else best[0])


def _snapshot(parameters: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


@torch.no_grad()
def _restore(parameters: list[nn.Parameter], weights: list[torch.Tensor]) -> None:
    for p, w in zip(parameters, weights, strict=True):
        p.copy_(w)
