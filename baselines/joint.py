"""Joint training: after each task, train on the training data of every task seen so far.

The usual upper bound of continual learning (the "cumulative" or "joint" baseline of van de
Ven & Tolias, 2019): nothing is forgotten because nothing is given up. The net is naive's
(shared reference trunk, one 2-way head per task); after task t arrives it trains with the shared
recipe (:mod:`clbench.recipe`), from where it stands, on shuffled batches drawn from the
union of tasks 0..t (its held-out part for early stopping drawn from that union too), each
example read out through its own task's head. The price is storage and compute that grow
with the stream: every training example is kept, raw, in the state.

Storage (tensor payload of the state, exact), for tasks 0..t of one input shape C x H x W:

    4 * (trunk + (t + 1) * head parameters)  +  sum over tasks s <= t of n_s * (C*H*W + 1)

with ``n_s`` the training examples of task s, kept as uint8 pixels plus one uint8 label
(MNIST: trunk 21,330, head 102, so 4 * (21,330 + 102 (t + 1)) + 785 * sum n_s bytes). Task
ids are implicit (one entry per task); the metadata (input shape, datasets) is a few hundred
bytes more.
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.common import require_input_shape
from baselines.memory import concat_examples, task_examples, train_multitask
from baselines.naive import Naive
from clbench.tasks import Task


class Joint(Naive):
    """Naive's net, retrained on all stored data of all tasks so far after each new task."""

    def __init__(self, device: str | torch.device = "cpu", **recipe: Any) -> None:
        super().__init__(device=device, **recipe)
        # One entry per task: its raw training inputs (uint8) and labels (uint8).
        self.task_data: list[dict[str, torch.Tensor]] = []

    def learn(self, task: Task) -> None:
        net = self._ensure_net(task.input_shape, task.scenario)
        require_input_shape(net.input_shape, task, "joint")
        net.add_head()
        self.datasets.append(task.dataset)
        self.task_data.append({"inputs": task.x_train.to(self.device),
                               "labels": task.y_train.to(self.device, torch.uint8)})
        everything = concat_examples([
            task_examples(data["inputs"], data["labels"], task_id)
            for task_id, data in enumerate(self.task_data)
        ])
        self.last_training = train_multitask(net, self.datasets, everything, self.recipe)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "task_data": list(self.task_data)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.task_data = [{key: value.to(self.device) for key, value in data.items()}
                          for data in state["task_data"]]

    def metrics(self) -> dict:
        return {**super().metrics(),
                "stored_examples": sum(len(data["labels"]) for data in self.task_data)}
