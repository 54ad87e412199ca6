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
from clbench.training import minibatches, predict_batched, sgd

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
        optimizer = sgd(net.parameters(), lr=self.lr, momentum=self.momentum)
        net.train()
        for _ in range(self.epochs):
            for x, y in minibatches(task.x_train, task.y_train, task.dataset, self.batch_size):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x, task.id), y).backward()
                optimizer.step()

    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        self.net.eval()
        return predict_batched(lambda batch: self.net(batch, task_id), x, self.datasets[task_id])

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
