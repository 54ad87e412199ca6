"""Task networks (PAPER.md, "Idea": the TN): built, seeded, flattened and loaded.

A TN is an ordinary network trained on one task with no constraint, by the shared training
loop every baseline uses (:func:`clbench.recipe.train`, with the preset's recipe: see
``TNEN.task_network``).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from clbench.nets import count_parameters, reference_net
from clbench.training import predict_batched

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


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             dataset: str) -> float | None:
    """Share of ``images`` that ``net`` labels correctly; None for an empty set."""
    if len(labels) == 0:
        return None
    net.eval()
    return (predict_batched(net, images, dataset) == labels).double().mean().item()
