"""Task networks (PAPER.md, "Idea": the TN): built, trained by plain backprop, flattened.

A TN is an ordinary network trained on one task with no constraint. Its training lives in
one small function, :func:`train_task_network`, so that routing it through a shared
training recipe changes a few lines here and nothing else.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clbench.nets import count_parameters, reference_net
from clbench.tasks import Task
from clbench.training import minibatches, predict_batched

SEED_STRIDE = 1_000_003  # a prime: (seed, task) pairs map to distinct streams


def task_seed(seed: int, task_id: int) -> int:
    """The seed of task ``task_id``'s random stream in a run seeded ``seed``."""
    return seed * SEED_STRIDE + task_id


def build_task_network(spec: str, input_shape) -> nn.Module:
    """A TN for ``input_shape``: ``"reference"`` (clbench.nets) or ``"mlp:H1,H2,..."``."""
    if spec == "reference":
        return reference_net(input_shape)
    kind, _, sizes = spec.partition(":")
    hidden = sizes.split(",") if sizes else []
    if kind == "mlp" and all(size.isdigit() and int(size) > 0 for size in hidden):
        widths = [math.prod(input_shape), *map(int, hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], 2))
    raise ValueError(f"unknown architecture {spec!r}; use 'reference' or 'mlp:H1,H2,...' "
                     "with positive hidden sizes, e.g. 'mlp:64'")


def seeded_task_network(spec: str, input_shape, seed: int) -> nn.Module:
    """The TN of ``spec`` with PyTorch's default initialisation drawn from ``seed`` (on CPU,
    so the same seed gives the same weights everywhere): the shared base of every skill."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_task_network(spec, input_shape)


def flatten_parameters(net: nn.Module) -> torch.Tensor:
    """All parameters of ``net`` as one detached vector, in ``net.parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def load_parameters(net: nn.Module, vector: torch.Tensor) -> nn.Module:
    """Copy ``vector`` (as laid out by :func:`flatten_parameters`) into ``net``."""
    if vector.numel() != count_parameters(net):
        raise ValueError(f"a vector of {vector.numel()} numbers cannot fill a network of "
                         f"{count_parameters(net)} parameters")
    with torch.no_grad():
        start = 0
        for parameter in net.parameters():
            parameter.copy_(vector[start : start + parameter.numel()].view_as(parameter))
            start += parameter.numel()
    return net


def holdout_split(task: Task, fraction: float, generator: torch.Generator):
    """(train inputs, train labels, held-out inputs, held-out labels), a seeded random split;
    ``fraction`` 0 holds nothing out (the paper preset trains on all training data)."""
    n = len(task.y_train)
    order = torch.randperm(n, generator=generator).to(task.y_train.device)
    n_held = min(max(1, round(n * fraction)), n - 1) if n > 1 and fraction > 0 else 0
    held, kept = order[:n_held], order[n_held:]
    return task.x_train[kept], task.y_train[kept], task.x_train[held], task.y_train[held]


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             dataset: str) -> float | None:
    """Share of ``images`` that ``net`` labels correctly; None for an empty set."""
    if len(labels) == 0:
        return None
    net.eval()
    return (predict_batched(net, images, dataset) == labels).double().mean().item()


class TrainedTaskNetwork(NamedTuple):
    """What training a TN leaves besides its weights: the data split and the effort."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_held: torch.Tensor
    y_held: torch.Tensor
    held_out_accuracy: float | None  # None where nothing was held out
    epochs: int
    steps: int


def train_task_network(net: nn.Module, task: Task, config: dict,
                       generator: torch.Generator) -> TrainedTaskNetwork:
    """Plain backprop (SGD with momentum) on one task for ``max_epochs``, stopping early
    once held-out accuracy reaches ``threshold`` (None: never, as the authors' 3 epochs)."""
    x_train, y_train, x_held, y_held = holdout_split(task, config["holdout_fraction"], generator)
    optimizer = torch.optim.SGD(net.parameters(), lr=config["tn_lr"],
                                momentum=config["tn_momentum"])
    threshold = config["threshold"]
    held_accuracy, epochs, steps = accuracy(net, x_held, y_held, task.dataset), 0, 0
    while epochs < config["max_epochs"] and (
            threshold is None or held_accuracy is None or held_accuracy < threshold):
        net.train()
        for x, y in minibatches(x_train, y_train, task.dataset, config["tn_batch_size"],
                                generator):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            steps += 1
        epochs += 1
        held_accuracy = accuracy(net, x_held, y_held, task.dataset)
    return TrainedTaskNetwork(x_train, y_train, x_held, y_held, held_accuracy, epochs, steps)
