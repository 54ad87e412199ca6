"""Independent networks: one reference network per task, trained on that task alone.

Nothing is shared, so nothing is forgotten (BWT is exactly 0) and nothing transfers; storage
is one whole network per task. It is the simple storage baseline the paper's method must
beat: keeping one task network per task, in fewer bits, optionally as the change from one
shared seeded initialisation (TN+EN's two storage tricks without its autoencoder).

Each task's net is trained in float32 with the shared recipe (:data:`clbench.recipe.DEFAULT`;
recipe fields can be overridden as agent arguments, e.g. ``lr=0.01``) and then stored in
``dtype`` (:mod:`clbench.quantize`); predictions always use the stored (dequantised) weights,
so the agent that learned a task and a fresh agent loaded from its state answer alike.

- ``float32``: the weights as trained; ``float16``: each weight rounded to half precision.
- ``int8`` / ``int4``: symmetric linear quantisation, ``w ~= scale * q`` with ``q`` a whole
  number in [-127, 127] (int8) or [-7, 7] (int4, two values packed per byte) and
  ``scale = max|w| / Q``. With ``int8_scale="channel"`` (default; it applies to int4 too) a
  weight matrix or kernel gets one scale per output channel (row); with ``"tensor"`` one
  scale for the whole tensor. Bias vectors always get one scale per tensor. Scales are
  float32.
- ``delta=True``: every task's net starts from the same initialisation, regenerated from an
  integer seed kept in the state's metadata (drawn once, at the first task, from torch's
  generator, which the harness seeds), and what is stored is ``quantise(w - w0)``: the
  change training made, in ``dtype``. The start costs no bytes.

Storage (tensor payload of the state, exact), for k tasks of P parameters:

    float32: 4 P k     float16: 2 P k     int8: (P + 4 S) k     int4: (ceil(P / 2) + 4 S) k

the same with ``delta=True``. S is the number of scales per net: with ``"channel"`` one per
output channel of each weight tensor plus one per bias (MNIST: 10 + 20 + 50 + 2 + 4 = 86),
with ``"tensor"`` one per tensor (MNIST: 8). MNIST (P = 21,432): 85,728 / 42,864 / 21,776
(tensor: 21,464) / 11,060 (tensor: 10,748) bytes per task; int4 is 12.9% of float32. Each
task's weights are kept flat, one tensor (integers: two, values and scales), so the
serialisation overhead is a few hundred bytes per task, plus the metadata (dtype, the seed,
input shape and dataset of each task). Tasks may differ in input shape (mixed MNIST + CIFAR
streams): each gets its own net.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clbench.nets import reference_net
from clbench.quantize import DTYPES, INT8_SCALES, dequantize_into, quantize
from clbench.recipe import DEFAULT, Recipe, TrainingLog, recipe_metrics, train
from clbench.tasks import Task
from clbench.training import dataset_for_unseen_task, predict_batched, seeded_for_unseen_task

# Hyperparameters (training: the shared recipe, clbench.recipe.DEFAULT)
DTYPE = "float32"
INT8_SCALE = "channel"
DELTA = False
SEED_RANGE = 2**31  # the shared start's seed is drawn from [0, SEED_RANGE)


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with torch's default initialisation drawn under ``seed`` (the global
    generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class Independent:
    """One reference net per task, trained from scratch, stored in ``dtype`` (optionally as
    the change from a shared seeded start); ``**recipe`` overrides the training recipe."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: str = DTYPE,
        int8_scale: str = INT8_SCALE,
        delta: bool = DELTA,
        **recipe: Any,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        if int8_scale not in INT8_SCALES:
            raise ValueError(f"int8_scale={int8_scale!r}: choose one of {', '.join(INT8_SCALES)}")
        if not isinstance(delta, bool):
            raise ValueError(f"delta={delta!r}: give true or false")
        self.device = torch.device(device)
        self.dtype, self.int8_scale, self.delta = dtype, int8_scale, delta
        self.recipe: Recipe = DEFAULT.replace(**recipe)
        self.last_training: TrainingLog | None = None
        self.base_seed: int | None = None  # with delta: the seed of the shared start
        self.stored: list[dict[str, torch.Tensor]] = []  # per task, its weights as stored
        self.input_shapes: list[list[int]] = []
        self.datasets: list[str] = []
        self.nets: list[nn.Module] = []  # per task, the float32 net predictions use

    def architecture(self, input_shape) -> nn.Module:
        """A freshly initialised network of one task (the reference net)."""
        return reference_net(input_shape)

    def _base(self, input_shape) -> nn.Module | None:
        """The shared start (with ``delta``), regenerated from the seed."""
        if not self.delta:
            return None
        return seeded(lambda: self.architecture(input_shape), self.base_seed).to(self.device)

    def _build(self, input_shape, stored: dict[str, torch.Tensor]) -> nn.Module:
        net = self.architecture(input_shape).to(self.device)
        return dequantize_into(net, stored, self.int8_scale, self._base(input_shape)).eval()

    def learn(self, task: Task) -> None:
        if self.delta and self.base_seed is None:
            self.base_seed = int(torch.randint(SEED_RANGE, (1,)))
        base = self._base(task.input_shape)
        net = self.architecture(task.input_shape).to(self.device) if base is None else \
            copy.deepcopy(base)
        net.train()
        self.last_training = train(net, net.parameters(), task.x_train, task.y_train,
                                   self.recipe, dataset=task.dataset)
        stored = quantize(net, self.dtype, self.int8_scale, base)
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

    def metrics(self) -> dict:
        return recipe_metrics(self.recipe, self.last_training)

    def state_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "int8_scale": self.int8_scale,
            "delta": self.delta,
            "base_seed": self.base_seed,
            "input_shapes": [list(shape) for shape in self.input_shapes],
            "datasets": list(self.datasets),
            "nets": list(self.stored),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = (state["dtype"], state["int8_scale"], state["delta"])
        if saved != (self.dtype, self.int8_scale, self.delta):
            raise ValueError(
                f"this state was saved with dtype={saved[0]!r}, int8_scale={saved[1]!r}, "
                f"delta={saved[2]!r}; build the agent with the same arguments (it has "
                f"dtype={self.dtype!r}, int8_scale={self.int8_scale!r}, delta={self.delta!r})"
            )
        self.base_seed = state["base_seed"]
        self.input_shapes = [list(shape) for shape in state["input_shapes"]]
        self.datasets = list(state["datasets"])
        self.stored = [{key: value.to(self.device) for key, value in stored.items()}
                       for stored in state["nets"]]
        self.nets = [self._build(shape, stored)
                     for shape, stored in zip(self.input_shapes, self.stored, strict=True)]
