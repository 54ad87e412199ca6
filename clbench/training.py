"""The training primitives agents share: shuffled normalised minibatches, batched prediction
and the SGD optimiser of the recipe, each in its fastest deterministic form.

What makes them fast (profiled against a hand-written PyTorch loop on the MNIST reference
net, batch 64, 1 CPU thread; see ``benchmarks/training_speed.py``):

- **Channels-last inputs on CPU.** A 1-channel image batch is stored the same way in NCHW and
  channels-last, but its strides tell oneDNN which layout to use for everything after it.
  Marked channels-last (a zero-copy view), the convolutions and above all the max-pooling of
  the reference nets run in the channels-last kernels, about 1.5x faster per training step
  than NCHW. Weights and gradients keep their usual contiguous layout, so flattening them,
  ``state_dict`` and ``view(-1)`` work as before. Multi-channel inputs (CIFAR) stay NCHW: a
  real channels-last copy would break user code that calls ``view`` on a batch.
- **Inputs normalised once per task.** :func:`normalized` keeps the float copy of the last
  few image tensors it saw (looked up by identity and in-place version), so the epochs of one
  ``learn`` index a ready float tensor instead of converting and standardising every batch.
  Elementwise normalisation gives the same bits whole or batch by batch.
- **No host synchronisation** inside the loops: nothing calls ``.item()`` or ``.tolist()``.
- **One fused optimiser step** (:func:`sgd`) instead of one small kernel per parameter.

Everything stays bitwise deterministic for a given seed and thread count: no kernel here is
nondeterministic, and the replay of a ``learn`` in a fresh process reproduces its weights.
``torch.compile`` of the training step is not used: on the 2-core CPU the compiled step ran
*slower* than eager (73.7 vs 54.7 ms per batch-64 step after 27 s of compilation, loaded
machine), so it never breaks even there (``benchmarks/training_speed.py --compile``).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from clbench import progress
from clbench.data import DATASETS, normalize

# How many normalised image tensors :func:`normalized` keeps: the task being learned and one
# more (an agent that interleaves its own buffer with the task's data, like replay).
NORMALIZED_CACHE_SIZE = 2

_normalized_cache: OrderedDict[int, tuple[weakref.ref, int, str, torch.Tensor]] = OrderedDict()


def fast_layout(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` with the memory layout convolutions run fastest on, values and memory unchanged.

    On CPU a contiguous 1-channel batch ``(B, 1, H, W)`` becomes a zero-copy view with
    channels-last strides (see the module docstring); anything else is returned as it is.
    """
    if (inputs.device.type == "cpu" and inputs.dim() == 4 and inputs.shape[1] == 1
            and inputs.is_contiguous()):
        height, width = inputs.shape[2], inputs.shape[3]
        return inputs.as_strided(inputs.shape, (height * width, 1, width, 1))
    return inputs


def normalized(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """float32 normalised copy of uint8 ``images`` (as :func:`clbench.data.normalize`), computed
    once and kept while ``images`` is one of the last :data:`NORMALIZED_CACHE_SIZE` tensors
    asked for and unchanged in place."""
    key = id(images)
    entry = _normalized_cache.get(key)
    if (entry is not None and entry[0]() is images and entry[1] == images._version
            and entry[2] == dataset):
        _normalized_cache.move_to_end(key)
        return entry[3]
    values = normalize(images, dataset)

    def forget(dead: weakref.ref) -> None:  # free the float copy with the images
        if key in _normalized_cache and _normalized_cache[key][0] is dead:
            del _normalized_cache[key]

    _normalized_cache[key] = (weakref.ref(images, forget), images._version, dataset, values)
    _normalized_cache.move_to_end(key)
    while len(_normalized_cache) > NORMALIZED_CACHE_SIZE:
        _normalized_cache.popitem(last=False)
    return values


def minibatches(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: str,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, normalised ``(inputs, labels)`` batches on the data's device.

    The order is ``torch.randperm(len(labels), generator=generator)`` (drawn on the CPU, so a
    seed gives the same order on every device); the last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
    inputs = normalized(images, dataset)
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        progress.advance()
        yield fast_layout(inputs.index_select(0, index)), labels.index_select(0, index)


@torch.no_grad()
def predict_batched(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    dataset: str,
    batch_size: int = 1024,
) -> torch.Tensor:
    """argmax labels (int64) of ``model`` over uint8 ``images``, normalised batch by batch."""
    outputs = [
        model(fast_layout(normalize(images[start : start + batch_size], dataset))).argmax(dim=1)
        for start in range(0, len(images), batch_size)
    ]
    if not outputs:
        return torch.zeros(0, dtype=torch.int64, device=images.device)
    return torch.cat(outputs)


def sgd(parameters: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
        weight_decay: float = 0.0) -> torch.optim.SGD:
    """``torch.optim.SGD`` with its fused kernel (one kernel for every parameter) on CPU and
    CUDA, the plain per-parameter loop elsewhere. Same update rule, deterministic.

    The fused kernel cannot step a mix of parameters with and without a momentum buffer, which
    a multi-head net meets when a head's first gradient comes after the first step (a replay
    or joint batch without that task's examples): torch raises a TypeError. So every
    momentum buffer starts as zeros: with no dampening, ``0 * momentum + grad`` is the
    ``grad`` the first step would have copied in, and a parameter without a gradient is
    skipped as before."""
    parameters = list(parameters)
    fused = bool(parameters) and all(p.device.type in ("cpu", "cuda") for p in parameters)
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum,
                                weight_decay=weight_decay, fused=fused or None)
    if fused and momentum != 0:
        for parameter in parameters:
            optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    return optimizer


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
