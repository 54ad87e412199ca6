"""Small helpers that agents share: shuffled normalised minibatches and batched prediction."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from clbench import progress
from clbench.data import DATASETS, normalize


def minibatches(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: str,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, normalised ``(inputs, labels)`` batches on the data's device."""
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        progress.advance()
        yield normalize(images.index_select(0, index), dataset), labels.index_select(0, index)


@torch.no_grad()
def predict_batched(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    dataset: str,
    batch_size: int = 1024,
) -> torch.Tensor:
    """argmax labels (int64) of ``model`` over uint8 ``images``, normalised batch by batch."""
    outputs = [
        model(normalize(images[start : start + batch_size], dataset)).argmax(dim=1)
        for start in range(0, len(images), batch_size)
    ]
    if not outputs:
        return torch.zeros(0, dtype=torch.int64, device=images.device)
    return torch.cat(outputs)


# Unseen tasks (``query_future``): an agent asked about a task it has not learned answers
# its best guess instead of raising. These two helpers make that guess deterministic.
UNSEEN_TASK_SEED = 0x5EED


@contextmanager
def seeded_for_unseen_task(task_id: int) -> Iterator[None]:
    """Draw fresh parameters (a new head, a new network) for unseen task ``task_id`` from a
    seed derived from the task id alone, without touching the global random state.

    So a guess does not depend on when, or in which process, ``predict`` was called, and
    calling it does not change what the agent learns next. Build modules inside on the CPU
    (as PyTorch does by default) and move them afterwards: only the CPU generator is forked.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNSEEN_TASK_SEED + int(task_id))
        yield


def dataset_for_unseen_task(input_shape: Sequence[int], datasets_seen: Sequence[str]) -> str:
    """The dataset whose normalisation an unseen task's inputs get: the latest dataset learned
    with this input shape (streams of one dataset), else the first known dataset of that shape.
    """
    shape = tuple(input_shape)
    for name in reversed(datasets_seen):
        if DATASETS[name].input_shape == shape:
            return name
    for name, info in DATASETS.items():
        if info.input_shape == shape:
            return name
    known = ", ".join(sorted({"x".join(map(str, info.input_shape)) for info in DATASETS.values()}))
    raise ValueError(f"no known dataset has inputs of shape {shape}; known shapes: {known}")
