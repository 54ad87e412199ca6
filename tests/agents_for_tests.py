"""Agents that break the contract in one way each, for the harness tests.

They live at module level so that a sealed worker can import them.
"""

from __future__ import annotations

import io
import sys
import time

import torch

from agents.random_agent import RandomAgent
from baselines.naive import Naive


class MeasuresItself(Naive):
    """Naive that reports the size of its own serialised state, measured independently."""

    def metrics(self):
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return {"own_state_bytes": len(buffer.getvalue())}


class ConstantZero:
    """Keeps nothing, answers 0 (negative) for everything."""

    def __init__(self, device="cpu"):
        self.device = device

    def learn(self, task):
        pass

    def predict(self, x, task_id):
        return torch.zeros(len(x), dtype=torch.int64)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class HidesWeights(Naive):
    """Trains like naive but leaves its network out of the state: it must gain nothing."""

    def learn(self, task):
        net = self._ensure_net(task.input_shape)
        while len(net.heads) < task.id:  # a fresh agent lost the heads of earlier tasks
            net.add_head()
            self.datasets.append(task.dataset)
        super().learn(task)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def predict(self, x, task_id):
        if self.net is None:
            return torch.zeros(len(x), dtype=torch.int64)
        return super().predict(x, task_id)


class ClassAttributeCheat(Naive):
    """Hides its network in a class attribute, which survives fresh agents in one process
    (but not a fresh worker process)."""

    stash: dict = {}

    def learn(self, task):
        super().learn(task)
        ClassAttributeCheat.stash["net"], ClassAttributeCheat.stash["datasets"] = (
            self.net, self.datasets)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        self.net = self.stash.get("net")
        self.datasets = self.stash.get("datasets", [])

    def predict(self, x, task_id):
        if self.net is None:
            return torch.zeros(len(x), dtype=torch.int64)
        return super().predict(x, task_id)


class WrongShape(ConstantZero):
    def predict(self, x, task_id):
        return torch.zeros(len(x) + 1, dtype=torch.int64)


class FloatLabels(ConstantZero):
    def predict(self, x, task_id):
        return torch.zeros(len(x))


class NaNLabels(ConstantZero):
    def predict(self, x, task_id):
        return torch.full((len(x),), float("nan"))


class RaisesOnSecondTask(ConstantZero):
    def __init__(self, device="cpu"):
        super().__init__(device)
        self.learned = 0

    def learn(self, task):
        if task.id == 1:
            raise RuntimeError("out of ideas")

    def state_dict(self):
        return {"learned": self.learned}


class PickledState(ConstantZero):
    def state_dict(self):
        return {"thing": object()}


ANNOUNCE_PAUSE_SECONDS = 0.2


class Announces(Naive):
    """Naive that writes a line to stderr as each learn and predict starts, then pauses a
    moment (the state is unchanged), so that a test can kill the run inside either phase."""

    def learn(self, task):
        _announce(f"learn {task.id}")
        super().learn(task)

    def predict(self, x, task_id):
        _announce(f"predict {task_id}")
        return super().predict(x, task_id)


def _announce(what: str) -> None:
    sys.stderr.write(f"clbench-test: {what}\n")
    sys.stderr.flush()
    time.sleep(ANNOUNCE_PAUSE_SECONDS)


class Centroids(ConstantZero):
    """Nearest class mean per task, jittered by the seeded generator: a cheap agent whose
    state grows with every task and depends on the seeds the harness sets."""

    def __init__(self, device="cpu"):
        super().__init__(device)
        self.means: dict[str, torch.Tensor] = {}

    def learn(self, task):
        x = task.x_train.flatten(1).double()
        means = torch.stack([x[task.y_train == label].mean(0) for label in (0, 1)])
        self.means[str(task.id)] = means + torch.rand_like(means)

    def predict(self, x, task_id):
        distances = torch.cdist(x.flatten(1).double(), self.means[str(task_id)])
        return distances.argmin(1)

    def state_dict(self):
        return {"means": dict(self.means)}

    def load_state_dict(self, state):
        self.means = dict(state["means"])


class SlowRandom(RandomAgent):
    """The random agent, 1 s slower in every learn: a sweep of it is still running when a
    test stops it just after its first run finished (with 0.3 s, a test process starved by a
    loaded machine once saw the other two runs finish before it could stop them)."""

    def learn(self, task) -> None:
        time.sleep(1.0)
        super().learn(task)
