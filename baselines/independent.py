"""Independent networks: one reference network per task, trained on that task alone.

Nothing is shared, so nothing is forgotten (BWT is exactly 0) and nothing transfers; storage
is one whole network per task. It is the simple storage baseline the paper's method must
beat: keeping one task network per task, optionally in half precision or int8.

Each task's net is trained in float32 (SGD lr 0.01, momentum 0.5, batch 64, 3 epochs) and
then stored in ``dtype``; predictions always use the stored (for int8/float16: dequantised)
weights, so the agent that learned a task and a fresh agent loaded from its state answer
alike.

- ``float32``: the weights as trained.
- ``float16``: each weight rounded to half precision.
- ``int8``: symmetric linear quantisation, ``w ~= scale * q`` with ``q`` an int8 in
  [-127, 127] and ``scale = max|w| / 127``, so each weight is off by at most ``scale / 2``.
  With ``int8_scale="channel"`` (default) a weight matrix or kernel gets one scale per
  output channel (row); with ``"tensor"`` one scale for the whole tensor. Bias vectors
  always get one scale per tensor. Scales are stored as float32.

Storage (tensor payload of the state, exact), for k tasks of P parameters:

    float32: 4 P k        float16: 2 P k        int8: (P + 4 S) k

with S the number of int8 scales per net: with ``"channel"`` one per output channel of each
weight tensor plus one per bias (MNIST: 10 + 20 + 50 + 2 + 4 = 86), with ``"tensor"`` one
per tensor (MNIST: 8). MNIST (P = 21,432): 85,728 / 42,864 / 21,776 (or 21,464) bytes per
task; int8 is 25.4% of float32. Each task's weights are kept flat, one tensor (int8: two,
values and scales), so the serialisation overhead is a few hundred bytes per task, plus the
metadata (dtype, input shape and dataset of each task). Tasks may differ in input shape
(mixed MNIST + CIFAR streams): each gets its own net.
"""

from __future__ import annotations

import torch
from torch import nn

from baselines.common import train_on_task
from clbench.nets import reference_net
from clbench.quantize import DTYPES, INT8_SCALES, dequantize_into, quantize
from clbench.tasks import Task
from clbench.training import dataset_for_unseen_task, predict_batched, seeded_for_unseen_task

# Hyperparameters (the paper's TN training settings)
LEARNING_RATE = 0.01
MOMENTUM = 0.5
BATCH_SIZE = 64
EPOCHS = 3
DTYPE = "float32"
INT8_SCALE = "channel"

class Independent:
    """One reference net per task, trained from scratch, stored in ``dtype``."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: str = DTYPE,
        int8_scale: str = INT8_SCALE,
        epochs: int = EPOCHS,
        lr: float = LEARNING_RATE,
        momentum: float = MOMENTUM,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        if int8_scale not in INT8_SCALES:
            raise ValueError(f"int8_scale={int8_scale!r}: choose one of {', '.join(INT8_SCALES)}")
        self.device = torch.device(device)
        self.dtype, self.int8_scale = dtype, int8_scale
        self.epochs, self.lr, self.momentum, self.batch_size = epochs, lr, momentum, batch_size
        self.stored: list[dict[str, torch.Tensor]] = []  # per task, its weights as stored
        self.input_shapes: list[list[int]] = []
        self.datasets: list[str] = []
        self.nets: list[nn.Module] = []  # per task, the float32 net predictions use

    def _build(self, input_shape, stored: dict[str, torch.Tensor]) -> nn.Module:
        net = reference_net(input_shape).to(self.device)
        return dequantize_into(net, stored, self.int8_scale).eval()

    def learn(self, task: Task) -> None:
        net = reference_net(task.input_shape).to(self.device)
        net.train()
        train_on_task(net, net.parameters(), task, self.epochs, self.lr, self.momentum,
                      self.batch_size)
        stored = quantize(net, self.dtype, self.int8_scale)
        self.stored.append(stored)
        self.input_shapes.append(list(task.input_shape))
        self.datasets.append(task.dataset)
        self.nets.append(self._build(task.input_shape, stored))

    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        if task_id >= len(self.nets):  # not learned yet (query_future): a fresh, untrained net
            shape = tuple(x.shape[1:])
            with seeded_for_unseen_task(task_id):
                net = reference_net(shape)
            return predict_batched(net.to(self.device).eval(), x,
                                   dataset_for_unseen_task(shape, self.datasets))
        return predict_batched(self.nets[task_id], x, self.datasets[task_id])

    def state_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "int8_scale": self.int8_scale,
            "input_shapes": [list(shape) for shape in self.input_shapes],
            "datasets": list(self.datasets),
            "nets": list(self.stored),
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["dtype"], state["int8_scale"]) != (self.dtype, self.int8_scale):
            raise ValueError(
                f"this state was saved with dtype={state['dtype']!r}, "
                f"int8_scale={state['int8_scale']!r}; build the agent with the same arguments "
                f"(it has dtype={self.dtype!r}, int8_scale={self.int8_scale!r})"
            )
        self.input_shapes = [list(shape) for shape in state["input_shapes"]]
        self.datasets = list(state["datasets"])
        self.stored = [{key: value.to(self.device) for key, value in stored.items()}
                       for stored in state["nets"]]
        self.nets = [self._build(shape, stored)
                     for shape, stored in zip(self.input_shapes, self.stored, strict=True)]
