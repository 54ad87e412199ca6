"""Turn a :class:`TaskSpec` into a :class:`Task`: select, relabel, balance, cap, shuffle, and
optionally hold out a validation part of the training data."""

from __future__ import annotations

import os

import numpy as np
import torch

from clbench.data import load_dataset
from clbench.tasks.spec import EVALUATIONS, Task, TaskSpec

DEFAULT_VALIDATION_FRACTION = 0.2


def balanced_indices(
    labels: np.ndarray,
    positive_fraction: float | None,
    cap: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices into binary ``labels`` with the requested share of positives, at most ``cap``.

    The side in excess is subsampled (usually the negatives) so that positives make up
    ``positive_fraction`` of the result; ``None`` keeps the natural balance. A cap then
    subsamples both sides in the same proportion. The result is in random order.
    """
    positives = rng.permutation(np.flatnonzero(labels == 1))
    negatives = rng.permutation(np.flatnonzero(labels == 0))
    n_pos, n_neg = len(positives), len(negatives)
    if positive_fraction is not None:
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"positive_fraction={positive_fraction} must be in (0, 1) or None")
        # At least one example per side, as with the cap below: a task needs both classes.
        wanted_neg = max(1, round(n_pos * (1 - positive_fraction) / positive_fraction))
        if wanted_neg <= n_neg:
            n_neg = wanted_neg
        else:
            n_pos = max(1, round(n_neg * positive_fraction / (1 - positive_fraction)))
    if cap is not None and n_pos + n_neg > cap:
        if cap < 2:
            raise ValueError(f"a cap of {cap} examples per task is too small; use at least 2")
        scaled_pos = min(max(1, round(cap * n_pos / (n_pos + n_neg))), cap - 1)
        n_pos, n_neg = scaled_pos, cap - scaled_pos
    chosen = np.concatenate([positives[:n_pos], negatives[:n_neg]])
    return rng.permutation(chosen)


def validation_size(n_examples: int, fraction: float) -> int:
    """How many of a task's ``n_examples`` training examples are held out for validation."""
    return round(n_examples * fraction)


def stratified_holdout(classes: np.ndarray, fraction: float, rng: np.random.Generator
                       ) -> np.ndarray:
    """Indices of :func:`validation_size` examples, spread over ``classes`` in proportion.

    Each class gives the whole part of ``fraction`` of its examples; the examples still
    missing go to the classes with the largest remainders (ties: the smaller class label), so
    every class is within one example of its exact share. Which examples, is drawn by ``rng``.
    """
    values, counts = np.unique(classes, return_counts=True)
    quotas = counts * fraction
    taken = np.floor(quotas).astype(np.int64)
    missing = validation_size(len(classes), fraction) - int(taken.sum())
    by_remainder = np.argsort(-(quotas - taken), kind="stable")
    taken[by_remainder[:missing]] += 1
    return np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(classes == value))[:count]
        for value, count in zip(values, taken, strict=True)
    ]))


def _split(spec: TaskSpec, train: bool, positive_fraction, cap, rng, root, device):
    """The task's examples of one split: inputs, {0,1} targets and their dataset classes."""
    data = load_dataset(spec.dataset, train=train, root=root, device=device)
    labels = data.labels.cpu().numpy()
    member = np.isin(labels, spec.positive + spec.negative)
    inside = np.flatnonzero(member)
    binary = np.isin(labels[inside], spec.positive).astype(np.int64)
    chosen = inside[balanced_indices(binary, positive_fraction, cap, rng)]
    index = torch.from_numpy(chosen).to(data.images.device)
    targets = torch.from_numpy(np.isin(labels[chosen], spec.positive).astype(np.int64))
    return data.images.index_select(0, index), targets.to(data.images.device), labels[chosen]


def _hold_out_validation(spec: TaskSpec, task_id: int, x, y, classes, fraction: float,
                         cap: int | None, rng: np.random.Generator):
    """Split training data into (learn part, validation part), stratified by dataset class;
    ``cap`` limits the validation queries (the rest of the held-out part is used by neither)."""
    held = stratified_holdout(classes, fraction, rng)
    kept = np.setdiff1d(np.arange(len(y)), held)
    binary = y.cpu().numpy()
    for part, index in (("training", kept), ("validation", held)):
        if len(np.unique(binary[index])) < 2:
            raise ValueError(
                f"task {task_id} ({spec.name}): holding out validation_fraction={fraction} of "
                f"its {len(y)} training examples leaves the {part} part without both labels; "
                "give the task more training examples (max_train_per_task) or another "
                "validation_fraction")
    held = held[balanced_indices(binary[held], None, cap, rng)]
    pick = [torch.from_numpy(index).to(y.device) for index in (kept, held)]
    return x[pick[0]], y[pick[0]], x[pick[1]], y[pick[1]]


def materialize(
    spec: TaskSpec,
    task_id: int,
    seed: int,
    positive_fraction: float | None = 0.4,
    max_train: int | None = None,
    max_test: int | None = None,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    evaluation: str = "test",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    scenario: str = "task",
) -> Task:
    """Build task ``task_id`` of a stream; the same (seed, task_id) gives the same examples.

    ``evaluation="test"``: the task's training data (``max_train`` at most) and its test data
    (``max_test`` at most). ``evaluation="validation"``: the test split is not read; a
    seeded, class-stratified ``validation_fraction`` of the training data is held out as the
    evaluation data (``x_val``; ``max_test`` at most of it) and the rest is ``x_train``.
    """
    rng = np.random.default_rng([seed, task_id])
    x_train, y_train, classes = _split(spec, True, positive_fraction, max_train, rng, root,
                                       device)
    if evaluation == "test":
        x_test, y_test, _ = _split(spec, False, positive_fraction, max_test, rng, root, device)
        return Task(task_id, spec, x_train, y_train, x_test, y_test, scenario=scenario)
    if evaluation != "validation":
        raise ValueError(f"evaluation={evaluation!r}: choose one of {', '.join(EVALUATIONS)}")
    # Its own generator: the validation draw leaves the training draws above as with "test".
    holdout_rng = np.random.default_rng([seed, task_id, 1])
    x_learn, y_learn, x_val, y_val = _hold_out_validation(
        spec, task_id, x_train, y_train, classes, validation_fraction, max_test, holdout_rng)
    return Task(task_id, spec, x_learn, y_learn, x_val=x_val, y_val=y_val, scenario=scenario)
