"""Naive fine-tuning: one shared trunk trained on every task in turn, one head per task.

The lower bound of continual learning: nothing protects earlier tasks, so the shared trunk
drifts toward the newest task and earlier heads read features they were not trained on
(catastrophic forgetting). Reference: the "None" baseline of van de Ven & Tolias (2019).

Scenarios: task-incremental (a head per task) and domain-incremental (``task.scenario ==
"domain"``: one 2-way head shared by all tasks, ``predict(x, None)``); every baseline built
on this class inherits both, and the head choice, from here. The scenario is fixed by the
first task and kept in the state.
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
    sgd,
)

# Hyperparameters (the paper's TN training settings)
LEARNING_RATE = 0.01
MOMENTUM = 0.5
BATCH_SIZE = 64
EPOCHS = 3


class Naive:
    """Shared reference trunk + one 2-way head per task, plain SGD on the current task."""

    scenarios = ("task", "domain")

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
        self.scenario = "task"

    def _ensure_net(self, input_shape, scenario: str = "task") -> MultiHeadNet:
        """The net, built on the first task; ``scenario`` "domain" makes its head shared."""
        if self.net is None:
            self.scenario = scenario
            self.net = MultiHeadNet(input_shape, shared_head=scenario == "domain").to(self.device)
        elif scenario != self.scenario:
            raise ValueError(f"{type(self).__name__}: a {scenario!r}-incremental task arrived "
                             f"after {self.scenario!r}-incremental ones; a stream has one scenario")
        return self.net

    def learn(self, task: Task) -> None:
        net = self._ensure_net(task.input_shape, task.scenario)
        net.add_head()
        self.datasets.append(task.dataset)
        optimizer = sgd(net.parameters(), lr=self.lr, momentum=self.momentum)
        net.train()
        for _ in range(self.epochs):
            for x, y in minibatches(task.x_train, task.y_train, task.dataset, self.batch_size):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x, task.id), y).backward()
                optimizer.step()

    def predict(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
        if task_id is None and self.scenario != "domain":
            raise ValueError(f"{type(self).__name__} learnt a task-incremental stream (a head "
                             "per task); predict needs the task id, not None")
        head = 0 if task_id is None else task_id  # domain: every id names the shared head
        if head >= len(self.datasets):  # not learned yet (query_future): a best guess
            shape = tuple(x.shape[1:])
            return predict_batched(self._unseen_model(head, shape), x,
                                   dataset_for_unseen_task(shape, self.datasets))
        self.net.eval()
        return predict_batched(lambda batch: self.net(batch, head), x, self.datasets[head])

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
            "scenario": self.scenario,
            "net": self.net.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.datasets = list(state["datasets"])
        if not self.datasets:
            return
        net = self._ensure_net(state["input_shape"], state.get("scenario", "task"))
        for _ in self.datasets:
            net.add_head()
        net.load_state_dict(state["net"])
