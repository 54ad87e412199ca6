"""Stored examples for the rehearsal baselines (joint, replay); training on batches mixing tasks.

Whatever examples a baseline keeps between tasks live in its state and are counted, so they
are kept as compactly as the data allows: raw pixels, not normalised floats. The stored form,
"examples", is a dict of three tensors of one length ``n``:

- ``inputs``: uint8 ``(n, C, H, W)``, the raw pixels (one byte a pixel, as datasets hold them);
- ``labels``: uint8 ``(n,)``, 0/1;
- ``task_ids``: int16 ``(n,)``, the task each example belongs to (its head, its normalisation).

``n * (C*H*W + 1 + 2)`` bytes: 787 a MNIST example.

Reservoir sampling (Vitter's algorithm R) keeps a uniform sample of every example offered so
far; it needs the number offered so far (``seen``), which its owner keeps in its state. The
class-balanced variant is CBRS (Chrysakis & Moens, "Online Continual Learning from Imbalanced
Data", ICML 2020), with a class being a (task, label) pair.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clbench.data import normalize
from clbench.nets import MultiHeadNet
from clbench.recipe import Recipe, TrainingLog, train
from clbench.training import fast_layout

LABEL_DTYPE = torch.uint8
TASK_ID_DTYPE = torch.int16
MAX_TASK_ID = torch.iinfo(TASK_ID_DTYPE).max

Examples = dict[str, torch.Tensor]


def as_examples(inputs: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor) -> Examples:
    """The stored form of ``(inputs, labels, task_ids)`` (see the module docstring)."""
    if inputs.dtype != torch.uint8:
        raise TypeError(f"stored inputs must be raw uint8 pixels, got {inputs.dtype}")
    if len(task_ids) and int(task_ids.max()) > MAX_TASK_ID:
        raise ValueError(f"task id {int(task_ids.max())} does not fit the stored int16 task ids "
                         f"(at most {MAX_TASK_ID})")
    return {"inputs": inputs, "labels": labels.to(LABEL_DTYPE),
            "task_ids": task_ids.to(TASK_ID_DTYPE)}


def task_examples(inputs: torch.Tensor, labels: torch.Tensor, task_id: int) -> Examples:
    """All of one task's examples in the stored form."""
    return as_examples(inputs, labels, torch.full((len(labels),), task_id, device=labels.device))


def empty_examples(input_shape, device: torch.device) -> Examples:
    """No examples yet, shaped for ``input_shape`` inputs."""
    return as_examples(torch.zeros((0, *input_shape), dtype=torch.uint8, device=device),
                       torch.zeros(0, device=device), torch.zeros(0, device=device))


def concat_examples(parts: list[Examples]) -> Examples:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def reservoir_slots(
    seen: int, n_new: int, capacity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Where reservoir sampling puts each of ``n_new`` examples offered after ``seen`` others.

    The example at stream position ``p`` (0-based) fills slot ``p`` while the buffer is not
    full; afterwards it replaces a uniform slot in ``[0, p]`` when that slot is below
    ``capacity``, else it is dropped (-1). Every example offered so far is then in the buffer
    with the same probability ``capacity / (seen + n_new)``. Apply with :func:`write_slots`.
    """
    positions = seen + torch.arange(n_new, dtype=torch.int64)
    uniform = torch.rand(n_new, generator=generator, dtype=torch.float64)
    draws = (uniform * (positions + 1)).floor().to(torch.int64)
    return torch.where(positions < capacity, positions,
                       torch.where(draws < capacity, draws, torch.full_like(draws, -1)))


def class_balanced_slots(
    buffer_classes: torch.Tensor,
    new_classes: torch.Tensor,
    class_seen: list[int],
    full_classes: list[int],
    capacity: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Where class-balanced reservoir sampling (CBRS) puts each new example (-1: dropped).

    While the buffer has room every example goes in. Once full, an example of a class that is
    not "full" (one that is, or once was, among the largest classes in the buffer) replaces a
    random example of a largest class; an example of a full class ``c`` replaces a random
    stored example of ``c`` with probability (stored of c) / (seen of c), i.e. reservoir
    sampling within its class. ``class_seen`` (count per class) and ``full_classes`` are the
    bookkeeping its owner keeps in its state; both are updated in place.
    """
    stored = buffer_classes.to(torch.int64).cpu().numpy().copy()
    classes = new_classes.to(torch.int64).cpu().tolist()
    n_classes = max(len(class_seen), max(classes, default=-1) + 1,
                    int(stored.max()) + 1 if len(stored) else 0)
    class_seen.extend([0] * (n_classes - len(class_seen)))
    counts = np.bincount(stored, minlength=n_classes)
    full = set(full_classes)
    size = len(stored)
    stored = np.concatenate([stored, np.full(capacity - min(size, capacity), -1)])

    def random_member(candidates: np.ndarray) -> int:
        pick = torch.randint(len(candidates), (1,), generator=generator).item()
        return int(candidates[pick])

    slots = []
    for label in classes:
        class_seen[label] += 1
        if size < capacity:
            slot, size = size, size + 1
        else:
            largest = counts.max()
            full.update(np.flatnonzero(counts == largest).tolist())
            if label not in full:
                slot = random_member(np.flatnonzero(counts[stored] == largest))
            elif torch.rand(1, generator=generator).item() * class_seen[label] < counts[label]:
                slot = random_member(np.flatnonzero(stored == label))
            else:
                slot = -1
        if slot >= 0:
            if stored[slot] >= 0:
                counts[stored[slot]] -= 1
            stored[slot] = label
            counts[label] += 1
        slots.append(slot)
    full_classes[:] = sorted(full)
    return torch.tensor(slots, dtype=torch.int64)


def example_classes(examples: Examples) -> torch.Tensor:
    """The class of each example for class-balanced sampling: the pair (task, label), as the
    index ``2 * task + label``."""
    return 2 * examples["task_ids"].to(torch.int64) + examples["labels"].to(torch.int64)


def write_slots(memory: Examples, slots: torch.Tensor, new: Examples) -> Examples:
    """``memory`` with ``new[i]`` written to slot ``slots[i]`` (skipped where -1), in order, so
    that a slot written twice keeps the later example, as when examples arrive one by one.
    Slots at or past the end grow the memory (they are consecutive: the buffer fills in order).
    """
    final: dict[int, int] = {}
    for source, slot in enumerate(slots.tolist()):
        if slot >= 0:
            final[slot] = source
    size = max([len(memory["labels"]), *(slot + 1 for slot in final)])
    grown = {key: torch.cat([value, value.new_zeros((size - len(value), *value.shape[1:]))])
             for key, value in memory.items()}
    device = memory["labels"].device
    destination = torch.tensor(list(final), dtype=torch.int64, device=device)
    source = torch.tensor(list(final.values()), dtype=torch.int64, device=device)
    for key, value in grown.items():
        value[destination] = new[key].index_select(0, source)
    return grown


def multitask_logits(net: MultiHeadNet, batch: Examples, datasets: list[str]) -> torch.Tensor:
    """2-way logits of a batch mixing tasks: each example is normalised for its task's
    dataset and read out through its own task's head (task-incremental)."""
    task_ids = batch["task_ids"].to(torch.int64)
    groups = [(task_id, task_ids == task_id) for task_id in task_ids.unique().tolist()]
    x = torch.empty(batch["inputs"].shape, dtype=torch.float32, device=task_ids.device)
    for task_id, mask in groups:
        x[mask] = normalize(batch["inputs"][mask], datasets[task_id])
    features = net.trunk(fast_layout(x))
    logits = features.new_empty((len(x), 2))
    for task_id, mask in groups:
        logits[mask] = net.heads[task_id](features[mask])
    return logits


def multitask_loss(net: MultiHeadNet, batch: Examples, datasets: list[str]) -> torch.Tensor:
    """Mean cross-entropy of a batch mixing tasks (:func:`multitask_logits`)."""
    return F.cross_entropy(multitask_logits(net, batch, datasets),
                           batch["labels"].to(torch.int64))


def train_multitask(
    net: MultiHeadNet,
    datasets: list[str],
    examples: Examples,
    recipe: Recipe,
    replay: Examples | None = None,
    replay_batch_size: int | None = None,
) -> TrainingLog:
    """The shared recipe over ``examples`` (its held-out part, if any, drawn from them); with
    ``replay``, every minibatch is joined by ``replay_batch_size`` (default: the recipe's
    batch size) examples drawn uniformly (with replacement) from it."""
    device = examples["labels"].device
    replaying = replay is not None and len(replay["labels"]) > 0
    drawn = recipe.batch_size if replay_batch_size is None else replay_batch_size

    def pick(index: torch.Tensor) -> Examples:
        return {key: value.index_select(0, index) for key, value in examples.items()}

    def loss(index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = pick(index)
        if replaying:
            picks = torch.randint(len(replay["labels"]), (drawn,)).to(device)
            batch = {key: torch.cat([value, replay[key].index_select(0, picks)])
                     for key, value in batch.items()}
        return multitask_loss(net, batch, datasets)

    net.train()
    return train(lambda index: multitask_logits(net, pick(index), datasets), net.parameters(),
                 torch.arange(len(examples["labels"]), device=device),
                 examples["labels"].to(torch.int64), recipe, loss=loss)
