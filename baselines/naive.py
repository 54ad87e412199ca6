"""Naive fine-tuning: one shared trunk trained on every task in turn, one head per task.

The lower bound of continual learning: nothing protects earlier tasks, so the shared trunk
drifts toward the newest task and earlier heads read features they were not trained on
(catastrophic forgetting). Reference: the "None" baseline of van de Ven & Tolias (2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.nets import MultiHeadNet
from clbench.tasks import Task
from clbench.training import (
    dataset_for_unseen_task,
    minibatches,
    predict_batched,
    seeded_for_unseen_task,
)

# Hyperparameters (the paper's TN training settings)
LEARNING_RATE = 0.01
MOMENTUM = 0.5
BATCH_SIZE = 64
EPOCHS = 3


class Naive:
    """Shared reference trunk + one 2-way head per task, plain SGD on the current task."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        epochs: int = EPOCHS,
        lr: float = LEARNING_RATE,
        momentum: float = MOMENTUM,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.device = torch.device(device)
        self.epochs, self.lr, self.momentum, self.batch_size = epochs, lr, momentum, batch_size
        self.net: MultiHeadNet | None = None
        self.datasets: list[str] = []

    def _ensure_net(self, input_shape) -> MultiHeadNet:
        if self.net is None:
            self.net = MultiHeadNet(input_shape).to(self.device)
        return self.net

    def learn(self, task: Task) -> None:
        net = self._ensure_net(task.input_shape)
        net.add_head()
        self.datasets.append(task.dataset)
        optimizer = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum)
        net.train()
        for _ in range(self.epochs):
            for x, y in minibatches(task.x_train, task.y_train, task.dataset, self.batch_size):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x, task.id), y).backward()
                optimizer.step()

    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        if task_id >= len(self.datasets):  # not learned yet (query_future): a best guess
            shape = tuple(x.shape[1:])
            return predict_batched(self._unseen_model(task_id, shape), x,
                                   dataset_for_unseen_task(shape, self.datasets))
        self.net.eval()
        return predict_batched(lambda batch: self.net(batch, task_id), x, self.datasets[task_id])

    def _unseen_model(self, task_id: int, input_shape: tuple[int, ...]):
        """Logits for a task not learned yet: the trunk as it stands with a fresh head (as
        learning the task would start), or a fresh net before any task; both drawn for the
        task id, so the guess is the same whenever it is asked."""
        with seeded_for_unseen_task(task_id):
            fresh = MultiHeadNet(input_shape)
            head = fresh.add_head()
        fresh.to(self.device).eval()
        if self.net is None or self.net.input_shape != input_shape:
            return lambda batch: fresh(batch, 0)
        self.net.eval()
        return lambda batch: head(self.net.trunk(batch))

    def state_dict(self) -> dict:
        if self.net is None:
            return {"datasets": []}
        return {
            "input_shape": list(self.net.input_shape),
            "datasets": list(self.datasets),
            "net": self.net.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.datasets = list(state["datasets"])
        if not self.datasets:
            return
        net = self._ensure_net(state["input_shape"])
        for _ in self.datasets:
            net.add_head()
        net.load_state_dict(state["net"])
