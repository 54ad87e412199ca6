"""Turn a :class:`TaskSpec` into a :class:`Task`: select, relabel, balance, cap, shuffle."""

from __future__ import annotations

import os

import numpy as np
import torch

from clbench.data import load_dataset
from clbench.tasks.spec import Task, TaskSpec


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


def _split(spec: TaskSpec, train: bool, positive_fraction, cap, rng, root, device):
    data = load_dataset(spec.dataset, train=train, root=root, device=device)
    labels = data.labels.cpu().numpy()
    member = np.isin(labels, spec.positive + spec.negative)
    inside = np.flatnonzero(member)
    binary = np.isin(labels[inside], spec.positive).astype(np.int64)
    chosen = inside[balanced_indices(binary, positive_fraction, cap, rng)]
    index = torch.from_numpy(chosen).to(data.images.device)
    targets = torch.from_numpy(np.isin(labels[chosen], spec.positive).astype(np.int64))
    return data.images.index_select(0, index), targets.to(data.images.device)


def materialize(
    spec: TaskSpec,
    task_id: int,
    seed: int,
    positive_fraction: float | None = 0.4,
    max_train: int | None = None,
    max_test: int | None = None,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> Task:
    """Build task ``task_id`` of a stream; the same (seed, task_id) gives the same examples."""
    rng = np.random.default_rng([seed, task_id])
    x_train, y_train = _split(spec, True, positive_fraction, max_train, rng, root, device)
    x_test, y_test = _split(spec, False, positive_fraction, max_test, rng, root, device)
    return Task(task_id, spec, x_train, y_train, x_test, y_test)
