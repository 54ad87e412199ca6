"""The reference networks of DESIGN.md, shared by the reference agent and the baselines.

- MNIST-shaped inputs (1x28x28): conv 1->10 (5x5), max-pool 2, ReLU, conv 10->20 (5x5),
  max-pool 2, ReLU, flatten 320, linear 320->50, ReLU, linear 50->2: 21,432 parameters.
- CIFAR-shaped inputs (3x32x32): conv 3->6 (5x5), pool, ReLU, conv 6->16 (5x5), pool, ReLU,
  linear 400->120, ReLU, 120->84, ReLU, 84->2: 61,326 parameters.

A network is a *trunk* (everything up to the last hidden layer) and a 2-way *head*;
baselines that share one trunk across tasks give each task its own head.

Their 2x2 max-pools are :class:`MaxPool2x2`: ``nn.MaxPool2d(2)`` with a faster inference path.
"""

from __future__ import annotations

import torch
from torch import nn

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` (kernel 2, stride 2, no padding, odd edges dropped) that, when no
    gradient is recorded on a CPU tensor, takes the elementwise maximum of the four strided
    2x2 corners instead of calling the pooling kernel: the same values (a maximum is exact, a
    NaN wins in both; only the sign of a zero maximum can differ, and the reference nets'
    logits are bitwise the same, see ``tests/test_training.py``). Every prediction and every
    no-grad check, such as TN+EN's held-out accuracy, gets faster: labelling 300 MNIST images
    with the reference net took 4.64 ms against 6.25 ms with the kernel (medians of 40
    interleaved rounds, one thread, idle 2-core CPU: ``python benchmarks/predict_speed.py``).
    Training (gradients recorded) keeps the pooling kernel: an exact autograd path built the
    same way took 12 ms per forward and backward of a batch of 64 against the kernel's
    0.7 ms (a one-off measurement on the loaded machine)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu" \
                or x.dim() != 4 or min(x.shape[-2:]) < 2:  # the kernel's own error if too small
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                             torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def mnist_trunk() -> nn.Sequential:
    """Feature extractor of the MNIST reference net: 1x28x28 -> 50 features."""
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5), MaxPool2x2(), nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5), MaxPool2x2(), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
    )


def cifar_trunk() -> nn.Sequential:
    """Feature extractor of the CIFAR reference net: 3x32x32 -> 84 features."""
    return nn.Sequential(
        nn.Conv2d(3, 6, kernel_size=5), MaxPool2x2(), nn.ReLU(),
        nn.Conv2d(6, 16, kernel_size=5), MaxPool2x2(), nn.ReLU(),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
    )


TRUNKS = {MNIST_SHAPE: (mnist_trunk, 50), CIFAR_SHAPE: (cifar_trunk, 84)}


def _trunk_entry(input_shape) -> tuple:
    shape = tuple(input_shape)
    if shape not in TRUNKS:
        known = ", ".join("x".join(map(str, s)) for s in TRUNKS)
        raise ValueError(f"no reference net for input shape {shape}; known shapes: {known}")
    return TRUNKS[shape]


def reference_trunk(input_shape) -> tuple[nn.Sequential, int]:
    """(trunk, number of features) of the reference net for ``input_shape``."""
    build, features = _trunk_entry(input_shape)
    return build(), features


def reference_net(input_shape, n_outputs: int = 2) -> nn.Sequential:
    """The whole reference net (trunk + one head) for ``input_shape``."""
    trunk, features = reference_trunk(input_shape)
    return nn.Sequential(*trunk, nn.Linear(features, n_outputs))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class MultiHeadNet(nn.Module):
    """One shared reference trunk and one 2-way head per task (task-incremental setting).

    Heads are added with :meth:`add_head` as tasks arrive; ``forward(x, task_id)`` runs the
    trunk and that task's head. Its ``state_dict`` holds the trunk and every head, so a
    fresh net rebuilt with the same number of heads loads it exactly.

    With ``shared_head=True`` (the domain-incremental scenario) every task's entry in
    ``heads`` is one and the same 2-way head, so code written per task (a head per task id)
    trains and reads that one head; ``parameters()`` lists it once, and its tensors are
    serialised once (the state's extra ``heads.<t>`` keys name the same storage).
    """

    def __init__(self, input_shape, shared_head: bool = False) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.shared_head = bool(shared_head)
        self.trunk, self.features = reference_trunk(self.input_shape)
        self.heads = nn.ModuleList()

    def add_head(self) -> nn.Linear:
        if self.shared_head and len(self.heads):
            head = self.heads[0]
        else:
            head = nn.Linear(self.features, 2).to(next(self.trunk.parameters()).device)
        self.heads.append(head)
        return head

    def forward(self, x, task_id: int):
        return self.heads[task_id](self.trunk(x))
