"""Averaged gradient episodic memory (A-GEM): never step against the memory's gradient.

Chaudhry, Ranzato, Rohrbach & Elhoseiny 2019, "Efficient lifelong learning with A-GEM".
Naive's shared trunk and per-task heads (``baselines/naive.py``) plus an episodic memory:
after each task, ``memory_per_task`` of its training examples, drawn at random, are kept as
raw uint8 inputs with their labels. While a later task is learnt, every step also takes the
gradient g_ref of the loss on ``memory_batch_size`` examples drawn from the whole memory
(each example through its own task's head). When the new task's gradient g conflicts with
it (g . g_ref < 0), the step uses instead

    g - (g . g_ref / g_ref . g_ref) * g_ref

whose dot product with g_ref is zero: to first order the step does not raise the loss on
the memory. g and g_ref span every parameter, trunk and all heads, as in the paper, so an
earlier head can move when the projection asks it to.

Storage (tensor payload, bytes; P_trunk = 21,330 trunk parameters for MNIST, 61,156 for
CIFAR; H = 102 or 170 head parameters; T = tasks learnt; D = C*H*W = 784 or 3,072 input
bytes; m_t = min(memory_per_task, training examples of task t)):
    4 * (P_trunk + T*H)  [the net]  +  sum_t m_t * (D + 1 + 2)
the memory being stored as ``baselines/replay.py``'s buffer is (``baselines/memory.py``):
uint8 inputs, a uint8 label and an int16 task id per example.

Defaults: the memory, 256 examples per task (on MNIST 201,472 bytes, about 2.3 times the
net), is not tuned (a memory budget is a choice of the comparison, not a hyperparameter to
fit). The reference batch is chosen on validation data among 16, 32 and 64 examples,
cheapest first, together with the shared recipe's lr (``clbench select``:
``leaderboard/tuning/shared_lr.json``, from ``leaderboard/tuning/onevsrest/agem.json`` and
``split/agem.json``): 64, as large as the training
batch, so a step costs about two of naive's (a reference batch of 256 made learning about
eight times slower than naive's on ``clbench/SplitMNIST5k-v0``).
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.memory import Examples, concat_examples, multitask_loss, task_examples
from baselines.regularizers import SharedTrunkAgent, on_device, split_like
from clbench.tasks import Task

# Hyperparameters (training: the shared recipe, clbench.recipe.DEFAULT, overridable by name)
MEMORY_PER_TASK = 256  # training examples of each task kept in the episodic memory
MEMORY_BATCH_SIZE = 64  # memory examples per reference gradient: leaderboard/tuning/shared_lr.json


def project_gradient(gradient: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's rule: ``gradient`` unchanged if it agrees with ``reference``, else projected.

    Both are flat vectors. The result has a non-negative dot product with ``reference``.
    """
    agreement = gradient @ reference
    scale = agreement.clamp(max=0) / (reference @ reference).clamp_min(1e-30)
    return gradient - scale * reference


class AGEM(SharedTrunkAgent):
    """Naive fine-tuning whose steps are projected so as not to raise the memory's loss."""

    STATE_KEYS = ("memory",)

    def __init__(
        self,
        device: str | torch.device = "cpu",
        memory_per_task: int = MEMORY_PER_TASK,
        memory_batch_size: int = MEMORY_BATCH_SIZE,
        **recipe: Any,
    ) -> None:
        super().__init__(device, **recipe)  # the shared recipe's overrides
        if memory_per_task < 1:
            raise ValueError(f"memory_per_task={memory_per_task}: keep at least 1 example")
        if memory_batch_size < 1:
            raise ValueError(f"memory_batch_size={memory_batch_size}: draw at least 1 example")
        self.memory_per_task, self.memory_batch_size = memory_per_task, memory_batch_size
        self.memory: Examples | None = None  # stored examples (baselines/memory.py)

    def learn(self, task: Task) -> None:
        net = self._start_task(task)
        params = list(net.parameters())
        self._train(params, task, before_step=None if self.memory is None
                    else lambda: self._project(params))
        self._remember(task)

    def _memory_loss(self) -> torch.Tensor:
        """Cross-entropy on a random batch of the memory, each example at its own head."""
        pick = torch.randperm(len(self.memory["labels"]))[: self.memory_batch_size]
        pick = pick.to(self.memory["labels"].device)
        batch = {key: value.index_select(0, pick) for key, value in self.memory.items()}
        return multitask_loss(self.net, batch, self.datasets)

    def _project(self, params: list[torch.Tensor]) -> None:
        """Replace the gradients in ``.grad`` by their A-GEM projection."""
        reference = torch.autograd.grad(self._memory_loss(), params, allow_unused=True)
        flat = [torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                           for p, g in zip(params, grads, strict=True)])
                for grads in ([p.grad for p in params], reference)]
        projected = project_gradient(*flat)
        for p, piece in zip(params, split_like(projected, params), strict=True):
            p.grad = piece

    def _remember(self, task: Task) -> None:
        """Add ``memory_per_task`` random training examples of ``task`` to the memory."""
        chosen = torch.randperm(len(task.y_train))[: self.memory_per_task]
        chosen = chosen.to(task.y_train.device)
        kept = task_examples(task.x_train[chosen], task.y_train[chosen], task.id)
        kept = on_device(kept, self.device)
        self.memory = kept if self.memory is None else concat_examples([self.memory, kept])
