"""A plug-in agent to copy: the four methods of the contract, each explained.

Run it:  clbench run --env clbench/SplitMNIST5k-v0 --agent agents.template:TemplateAgent
Register it in your own package's pyproject.toml to use a short name:

    [project.entry-points."clbench.agents"]
    mine = "my_package.my_module:MyAgent"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.data import dataset_info
from clbench.nets import reference_net
from clbench.tasks import Task
from clbench.training import (
    dataset_for_unseen_task,
    minibatches,
    predict_batched,
    seeded_for_unseen_task,
)


class TemplateAgent:
    """One small reference network per task, trained for ``epochs`` with Adam."""

    # Optional: the scenarios the agent supports (default: task-incremental only). A net per
    # task needs the task id; an agent with one shared head may add "domain": it then learns
    # tasks whose task.scenario is "domain" and is asked predict(x, None).
    scenarios = ("task",)

    # The harness builds the agent as TemplateAgent(device=..., **agent_args), again after
    # every task, so the constructor must take the same arguments each time. Do the work in
    # learn and predict, which are timed: the constructor, load_state_dict and state_dict
    # are not, and a call whose CPU time its seconds cannot hold fails (implausible_cost).
    # Import libraries at the top of the file: those imports are not held against you.
    def __init__(self, device: str | torch.device = "cpu", epochs: int = 1) -> None:
        self.device = torch.device(device)
        self.epochs = epochs
        self.nets: list[torch.nn.Module] = []
        self.datasets: list[str] = []  # per task, to normalise its inputs in predict

    # learn(task): task.x_train is uint8 (N, C, H, W), task.y_train int64 in {0, 1}.
    # No test data, no data of earlier tasks (unless you keep it in your state: it counts).
    def learn(self, task: Task) -> None:
        net = reference_net(task.input_shape).to(self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(self.epochs):
            for x, y in minibatches(task.x_train, task.y_train, task.dataset, batch_size=64):
                optimizer.zero_grad()
                F.cross_entropy(net(x), y).backward()
                optimizer.step()
        self.nets.append(net)
        self.datasets.append(task.dataset)

    # predict(x, task_id): uint8 inputs of task ``task_id`` -> int64 labels in {0, 1}. With
    # future queries (query_future=true) the task may not be learned yet: answer your best
    # guess, never raise (here an untrained net, the same one whenever it is asked).
    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        if task_id >= len(self.nets):
            shape = tuple(x.shape[1:])
            with seeded_for_unseen_task(task_id):
                net = reference_net(shape)
            return predict_batched(net.to(self.device).eval(), x,
                                   dataset_for_unseen_task(shape, self.datasets))
        net = self.nets[task_id].eval()
        return predict_batched(net, x, self.datasets[task_id])

    # state_dict(): EVERYTHING kept between tasks: tensors and plain values only. The
    # harness saves it, counts its bytes (your storage footprint) and continues with a
    # fresh agent that loaded it. Anything not in here is gone.
    def state_dict(self) -> dict:
        return {"datasets": self.datasets, "nets": [net.state_dict() for net in self.nets]}

    def load_state_dict(self, state: dict) -> None:
        self.datasets = list(state["datasets"])
        self.nets = []
        for dataset, weights in zip(self.datasets, state["nets"], strict=True):
            net = reference_net(dataset_info(dataset).input_shape).to(self.device)
            net.load_state_dict(weights)
            self.nets.append(net)

    # metrics() (optional): plain figures about the last task, stored in the result file.
    def metrics(self) -> dict:
        return {"networks": len(self.nets)}
