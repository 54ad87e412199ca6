"""Naive fine-tuning: one shared trunk trained on every task in turn, one head per task.

The lower bound of continual learning: nothing protects earlier tasks, so the shared trunk
drifts toward the newest task and earlier heads read features they were not trained on
(catastrophic forgetting). Reference: the "None" baseline of van de Ven & Tolias (2019).

Scenarios: task-incremental (a head per task) and domain-incremental (``task.scenario ==
"domain"``: one 2-way head shared by all tasks, ``predict(x, None)``); every baseline built
on this class inherits both, and the head choice, from here. The scenario is fixed by the
first task and kept in the state.

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
from clbench.training import dataset_for_unseen_task, predict_batched, seeded_for_unseen_task


class Naive:
    """Shared reference trunk + one 2-way head per task, trained on the current task only.

    ``**recipe`` overrides fields of the shared training recipe (:class:`clbench.recipe.Recipe`).
    """

    scenarios = ("task", "domain")

    def __init__(self, device: str | torch.device = "cpu", **recipe: Any) -> None:
        self.device = torch.device(device)
        self.recipe: Recipe = DEFAULT.replace(**recipe)
        self.last_training: TrainingLog | None = None  # for metrics(); not part of the state
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

    def _train(self, parameters, task: Task, **hooks: Any) -> TrainingLog:
        """The shared recipe on ``task``'s data through its own head (``hooks``: see
        :func:`clbench.recipe.train`)."""
        self.net.train()
        self.last_training = train(lambda x: self.net(x, task.id), parameters, task.x_train,
                                   task.y_train, self.recipe, dataset=task.dataset, **hooks)
        return self.last_training

    def learn(self, task: Task) -> None:
        net = self._ensure_net(task.input_shape, task.scenario)
        net.add_head()
        self.datasets.append(task.dataset)
        self._train(net.parameters(), task)

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

    def metrics(self) -> dict:
        return recipe_metrics(self.recipe, self.last_training)

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

