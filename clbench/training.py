"""Small helpers that agents share: shuffled normalised minibatches and batched prediction."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from clbench import progress
from clbench.data import normalize


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
