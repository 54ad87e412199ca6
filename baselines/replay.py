"""Experience replay: a small buffer of raw earlier examples, mixed into every training batch.

Experience replay in the form of Chaudhry et al., "On Tiny Episodic Memories in Continual
Learning" (2019): the net is naive's (shared reference trunk, one 2-way head per task); while
task t is learned, each batch of ``batch_size`` task-t examples is joined by
``replay_batch_size`` examples drawn from the buffer, every example read out through its own
task's head (a step costs about (batch_size + replay_batch_size) / batch_size of naive's). After
task t is learned its training examples are offered to the buffer, which keeps a uniform
sample of all examples seen (reservoir sampling), or with ``class_balanced=True`` a sample
balanced over the (task, label) classes (CBRS, Chrysakis & Moens 2020). The buffer holds at
most ``buffer_size`` examples, raw (uint8 pixels, uint8 label, int16 task id), so its cost
does not grow with the stream. The buffer's size is a memory budget of the comparison, not
tuned; ``replay_batch_size`` is chosen on validation data among 16, 32 and 64, cheapest
first, together with the shared recipe's lr (``clbench select``:
``leaderboard/tuning/shared_lr.json``, from ``leaderboard/tuning/onevsrest/replay.json`` and
``split/replay.json``): 64.

Storage (tensor payload of the state, exact), after tasks 0..t of input shape C x H x W:

    4 * (trunk + (t + 1) * head parameters)  +  m * (C*H*W + 1 + 2),   m = min(buffer_size, N)

with N the training examples offered so far (MNIST: 4 * (21,330 + 102 (t + 1)) + 787 m,
so 157,400 buffer bytes at the default buffer_size=200). The bookkeeping is metadata: the
reservoir counter N (``seen``, which reservoir sampling needs to stay uniform across tasks),
and for CBRS the examples seen per class and the classes ever largest (two ints per task
at most); a few hundred bytes more, plus the input shape and datasets.
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.common import require_input_shape
from baselines.memory import (
    class_balanced_slots,
    empty_examples,
    example_classes,
    reservoir_slots,
    task_examples,
    train_multitask,
    write_slots,
)
from baselines.naive import Naive
from clbench.tasks import Task

# Hyperparameters (training: the shared recipe, clbench.recipe.DEFAULT, overridable by name)
BUFFER_SIZE = 200  # a memory budget fixed for the comparison (not tuned), as for A-GEM
REPLAY_BATCH_SIZE = 64  # buffer examples joined to each batch: leaderboard/tuning/shared_lr.json
CLASS_BALANCED = False


class Replay(Naive):
    """Naive's net trained on batches of the new task joined by replayed buffer examples."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        buffer_size: int = BUFFER_SIZE,
        class_balanced: bool = CLASS_BALANCED,
        replay_batch_size: int = REPLAY_BATCH_SIZE,
        **recipe: Any,
    ) -> None:
        super().__init__(device=device, **recipe)
        if int(buffer_size) != buffer_size or buffer_size < 0:
            raise ValueError(f"buffer_size={buffer_size!r}: give a whole number of examples >= 0")
        if int(replay_batch_size) != replay_batch_size or replay_batch_size < 1:
            raise ValueError(f"replay_batch_size={replay_batch_size!r}: give a whole number of "
                             "examples >= 1 (buffer_size=0 turns replay off)")
        self.buffer_size, self.class_balanced = int(buffer_size), bool(class_balanced)
        self.replay_batch_size = int(replay_batch_size)
        self.buffer: dict[str, torch.Tensor] | None = None
        self.seen = 0
        self.class_seen: list[int] = []
        self.full_classes: list[int] = []

    def learn(self, task: Task) -> None:
        net = self._ensure_net(task.input_shape, task.scenario)
        require_input_shape(net.input_shape, task, "replay")
        net.add_head()
        self.datasets.append(task.dataset)
        if self.buffer is None:
            self.buffer = empty_examples(net.input_shape, self.device)
        current = task_examples(task.x_train.to(self.device), task.y_train.to(self.device),
                                task.id)
        self.last_training = train_multitask(net, self.datasets, current, self.recipe,
                                             replay=self.buffer,
                                             replay_batch_size=self.replay_batch_size)
        self._offer(current)

    def _offer(self, new: dict[str, torch.Tensor]) -> None:
        """Offer ``new`` examples, in order, to the buffer (reservoir or CBRS); the random draws
        come from torch's global generator, which the harness seeds before every task."""
        if self.class_balanced:
            slots = class_balanced_slots(example_classes(self.buffer), example_classes(new),
                                         self.class_seen, self.full_classes, self.buffer_size)
        else:
            slots = reservoir_slots(self.seen, len(new["labels"]), self.buffer_size)
        self.buffer = write_slots(self.buffer, slots, new)
        self.seen += len(new["labels"])

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.buffer is not None:
            state.update(buffer=dict(self.buffer), seen=self.seen,
                         class_seen=list(self.class_seen), full_classes=list(self.full_classes))
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "buffer" in state:
            self.buffer = {key: value.to(self.device) for key, value in state["buffer"].items()}
            self.seen = int(state["seen"])
            self.class_seen = [int(count) for count in state["class_seen"]]
            self.full_classes = [int(label) for label in state["full_classes"]]

    def metrics(self) -> dict:
        if self.buffer is None:
            return {**super().metrics(), "buffer_examples": 0}
        task_ids = self.buffer["task_ids"].to(torch.int64)
        per_task = torch.bincount(task_ids, minlength=len(self.datasets))
        return {**super().metrics(), "buffer_examples": len(self.buffer["labels"]),
                "seen": self.seen, "buffer_per_task": per_task.tolist()}
