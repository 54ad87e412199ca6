"""Linear: one logistic-regression classifier per task on the normalised pixels.

The floor of the benchmark: if a stream's tasks are solved by a linear function of the
pixels, a deep network (and any way of keeping many of them) adds little there. Each task
gets its own classifier ``p(positive | x) = sigmoid(w . x + b)`` over the C*H*W normalised
pixel values, trained with the shared recipe (:data:`clbench.recipe.DEFAULT`; recipe
fields can be overridden as agent arguments) on the logistic loss, written as the
cross-entropy of the 2-way logits ``(0, w . x + b)``. Nothing is shared, so nothing is
forgotten (BWT is exactly 0).

It is ``independent`` (``baselines/independent.py``) with the logistic regression in place
of the reference net, so its storage options are the same (``dtype``, ``int8_scale``,
``delta``); by default each classifier is stored in float32.

Storage (tensor payload of the state, exact), for k tasks of D = C*H*W inputs (P = D + 1):

    float32: 4 (D + 1) k    float16: 2 (D + 1) k    int8: (D + 1 + 4 S) k
    int4: (ceil((D + 1) / 2) + 4 S) k

with S = 2 scales per task (the weight row and the bias). MNIST (D = 784): 3,140 bytes per
task in float32 (3.7% of one fp32 reference net); CIFAR (D = 3,072): 12,292.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from baselines.independent import Independent


class LogisticRegression(nn.Module):
    """``x -> (0, w . x + b)``: 2-way logits whose softmax is the logistic regression."""

    def __init__(self, input_shape) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.linear(x.flatten(1))
        return torch.cat([torch.zeros_like(score), score], dim=1)


class Linear(Independent):
    """One logistic regression per task on the normalised pixels (module docstring)."""

    def architecture(self, input_shape) -> nn.Module:
        return LogisticRegression(input_shape)
