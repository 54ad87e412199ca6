"""Naive fine-tuning: one shared trunk trained on every task in turn, one head per task.

The lower bound of continual learning: nothing protects earlier tasks, so the shared trunk
drifts toward the newest task and earlier heads read features they were not trained on
(catastrophic forgetting). Reference: the "None" baseline of van de Ven & Tolias (2019).

Training: the shared recipe (:data:`clbench.recipe.DEFAULT`: optimiser, lr, momentum, batch,
most epochs, held-out early stopping) over every parameter of the net, on the new task's
data through its new head. Any recipe field can be overridden as an agent argument
(``lr=0.01``, ``epochs=5``, ...); ``metrics()`` reports the resolved recipe and what the last
``learn`` did (epochs run, the epoch kept, its held-out accuracy).
"""

from __future__ import annotations

from typing import Any

import torch

from clbench.nets import MultiHeadNet
from clbench.recipe import DEFAULT, Recipe, TrainingLog, recipe_metrics, train
from clbench.tasks import Task
from clbench.training import predict_batched


class Naive:
    """Shared reference trunk + one 2-way head per task, trained on the current task only.

    ``**recipe`` overrides fields of the shared training recipe (:class:`clbench.recipe.Recipe`).
    """

    def __init__(self, device: str | torch.device = "cpu", **recipe: Any) -> None:
        self.device = torch.device(device)
        self.recipe: Recipe = DEFAULT.replace(**recipe)
        self.last_training: TrainingLog | None = None  # for metrics(); not part of the state
        self.net: MultiHeadNet | None = None
        self.datasets: list[str] = []

    def _ensure_net(self, input_shape) -> MultiHeadNet:
        if self.net is None:
            self.net = MultiHeadNet(input_shape).to(self.device)
        return self.net

    def _train(self, parameters, task: Task, **hooks: Any) -> TrainingLog:
        """The shared recipe on ``task``'s data through its own head (``hooks``: see
        :func:`clbench.recipe.train`)."""
        self.net.train()
        self.last_training = train(lambda x: self.net(x, task.id), parameters, task.x_train,
                                   task.y_train, self.recipe, dataset=task.dataset, **hooks)
        return self.last_training

    def learn(self, task: Task) -> None:
        net = self._ensure_net(task.input_shape)
        net.add_head()
        self.datasets.append(task.dataset)
        self._train(net.parameters(), task)

    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        self.net.eval()
        return predict_batched(lambda batch: self.net(batch, task_id), x, self.datasets[task_id])

    def metrics(self) -> dict:
        return recipe_metrics(self.recipe, self.last_training)

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

