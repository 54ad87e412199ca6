"""K networks trained at once give the networks that training them one by one gives.

Tolerance: atol 1e-6 on every weight after a few SGD steps (lr 0.05, momentum 0.5). The
stacked (grouped, batched) kernels add the same products in another order, so each gradient
differs from the loop's by float32 roundings; measured here, the weights of the two ends
differ by at most 3e-8 after these runs. 1e-6 leaves a margin of 30x for other CPUs and
thread counts and is still 200x below the smallest change training makes to any tensor
here (2e-4), so a wrong batch, a missing momentum term or a step taken by a network whose
stream has ended fails it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbench.nets import reference_net
from clbench.tasks import Task, TaskSpec
from clbench.vectorized import NetworkStack, train_one_by_one, train_together

ATOL = 1e-6


def random_task(n: int, seed: int, shape=(1, 28, 28)) -> Task:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    dataset = "mnist5k" if shape[0] == 1 else "cifar10"
    return Task(seed, TaskSpec(dataset, (0,), (1,)), images, labels)


class TwoLayer(nn.Module):
    """Not a Sequential: trained through functional_call + vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(784, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


def assert_same_training(build, tasks, epochs=1, batch_size=32, seeds=(0, 1, 2)) -> None:
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        nets.append(build())
    alone = copy.deepcopy(nets)
    before = copy.deepcopy(nets)
    train_together(nets, tasks, epochs=epochs, lr=0.05, momentum=0.5, batch_size=batch_size,
                   generators=[torch.Generator().manual_seed(10 + i) for i in range(len(nets))])
    train_one_by_one(alone, tasks, epochs=epochs, lr=0.05, momentum=0.5, batch_size=batch_size,
                     generators=[torch.Generator().manual_seed(10 + i) for i in range(len(nets))])
    for net, reference, start in zip(nets, alone, before, strict=True):
        for p, q, p0 in zip(net.parameters(), reference.parameters(), start.parameters(),
                            strict=True):
            assert not torch.equal(q, p0)  # training moved it
            torch.testing.assert_close(p, q, rtol=0, atol=ATOL)


def test_reference_nets_on_streams_of_different_lengths() -> None:
    tasks = [random_task(70, 0), random_task(100, 1), random_task(45, 2)]
    assert_same_training(lambda: reference_net((1, 28, 28)), tasks, epochs=2)


def test_k_seeds_of_one_task_and_a_cifar_net() -> None:
    task = random_task(40, 3, shape=(3, 32, 32))
    assert_same_training(lambda: reference_net((3, 32, 32)), [task] * 3)


def test_any_module_through_vmap() -> None:
    assert NetworkStack([TwoLayer(), TwoLayer()]).layers is None
    assert_same_training(TwoLayer, [random_task(50, 4), random_task(50, 5), random_task(30, 6)])


def test_global_rng_draws_batches_as_the_loop_does() -> None:
    tasks = [random_task(50, 7), random_task(50, 8)]
    nets = [reference_net((1, 28, 28)) for _ in tasks]
    alone = copy.deepcopy(nets)
    torch.manual_seed(5)
    train_together(nets, tasks, epochs=1, lr=0.05, momentum=0.5, batch_size=16)
    torch.manual_seed(5)
    train_one_by_one(alone, tasks, epochs=1, lr=0.05, momentum=0.5, batch_size=16)
    for net, reference in zip(nets, alone, strict=True):
        for p, q in zip(net.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=ATOL)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="2 networks but 1 tasks"):
        train_together([TwoLayer(), TwoLayer()], [random_task(10, 0)], 1, 0.1, 0.0, 8)
    with pytest.raises(ValueError, match="same architecture"):
        NetworkStack([TwoLayer(), reference_net((1, 28, 28))])
    with pytest.raises(ValueError, match="buffers"):
        NetworkStack([nn.BatchNorm1d(3)])
