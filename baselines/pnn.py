"""Progressive neural networks: a new column per task, earlier columns frozen, lateral adapters.

Rusu et al., "Progressive Neural Networks" (2016, arXiv:1606.04671). Each task gets a
column, a fresh reference network; the columns of earlier tasks are frozen, so no earlier
task can be forgotten (BWT is exactly 0), and the new column may reuse their features
through lateral connections: every layer i >= 2 of column k (each hidden layer after the
first, and the output layer, as in the paper's Figure 1) adds to its pre-activation

    U_i sigma(V_i [alpha_i,j * h_{i-1}^(j)]_{j<k})

the paper's non-linear adapter (its eq. 2): the activations ``h_{i-1}`` of the earlier
columns' previous layer, each multiplied by a learned scale ``alpha`` (initialised to a
random small value, to match the scales of the different inputs), concatenated and
projected onto as many units/channels as one column's layer i-1 has (``V``, a 1x1
convolution for convolutional maps, as in the paper), ReLU, then mapped like column k's own
layer i (``U``: same kernel or shape, no bias; the layer's own bias serves). Only the new
column and its adapters are trained (the shared recipe, :mod:`clbench.recipe`); task t is
answered by column t.

Training reads the frozen columns' activations from a cache: they are computed once per
``learn`` over the task's training inputs (batch by batch, no gradient), and every step
looks its minibatch up instead of running the earlier columns again, epoch after epoch. The
same function, so the same training up to float rounding (batches of 1,024 add in another
order than minibatches); over a stream that rounding can tip an early-stopping choice: on
OneVsRestMNIST5k, seed 0, the accuracy matrix moved by up to 0.02 a cell (ACC 0.978, 0.979
without the cache: the leaderboard's run and the one it replaced in 2a71240;
SplitMNIST5k's stayed bitwise the same). On TupleMNIST5k (50 tasks, seed 0,
one thread, loaded 2-core CPU) it made the learn of task 10 2.4x faster and that of task 49
5.6x (19 against 107 s; 8x fewer FLOPs), ``python benchmarks/pnn_cache.py --at 10 25 49``.
Earlier columns beyond :data:`ACTIVATION_CACHE_BYTES` (the cache holds the first of them
that fit) run per step as before.

Storage (tensor payload of the state, exact): 4 bytes per parameter of all columns. Column
1 is one reference net; column k >= 2 adds its adapters. MNIST (m = k - 1 earlier columns):

    column k = 21,432 + [k >= 2] (21,180 + 3,003 m) parameters
      into conv2: alpha m + V (10 m -> 10, 1x1) 100 m + 10 + U (10 -> 20, 5x5) 5,000
      into fc1:   alpha m + V (20 m -> 20, 1x1) 400 m + 20 + U (320 -> 50)     16,000
      into head:  alpha m + V (50 m -> 50)     2,500 m + 50 + U (50 -> 2)          100

so after K tasks: 4 * (21,432 K + 21,180 (K - 1) + 3,003 K (K - 1) / 2) bytes; storage
grows quadratically with the tasks. The metadata (input shape, datasets) is a few hundred
bytes more. Every task needs the same input shape (a lateral connection needs matching
layers).
"""

from __future__ import annotations

import torch
from torch import nn

from baselines.common import require_input_shape
from baselines.naive import Naive
from clbench.nets import reference_net
from clbench.recipe import train
from clbench.tasks import Task
from clbench.training import fast_layout, normalized, seeded_for_unseen_task

# Hyperparameters (training: the shared recipe, clbench.recipe.DEFAULT, overridable by name)
ALPHA_INIT = 0.1  # each adapter scale starts uniform in [0, ALPHA_INIT): "a random small value"

# At most this many bytes of frozen-column activations are cached during one learn (the
# reference nets keep about 7 KB per column and training example: 1 GiB holds 74 columns of
# 2,000 examples, or 9 columns of 15,000). Not a hyperparameter: it changes speed only.
ACTIVATION_CACHE_BYTES = 1 << 30

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def reference_layers(input_shape) -> list[tuple[nn.Module, nn.Sequential]]:
    """The reference net as (weight layer, the ops after it) pairs: conv -> (pool, ReLU),
    linear -> (ReLU), the head -> (). Flatten is left out: a linear layer flattens its input."""
    layers: list[tuple[nn.Module, list[nn.Module]]] = []
    for module in reference_net(input_shape):
        if isinstance(module, WEIGHT_LAYERS):
            layers.append((module, []))
        elif not isinstance(module, nn.Flatten):
            layers[-1][1].append(module)
    return [(layer, nn.Sequential(*after)) for layer, after in layers]


def width(layer: nn.Module) -> int:
    """Channels (conv) or units (linear) a layer outputs."""
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


class LateralAdapter(nn.Module):
    """Into one layer of column k: U relu(V [alpha_j h^(j)]_{j<k}) from k earlier columns' inputs
    to that layer, where ``previous`` is the layer that made them and ``layer`` the receiver."""

    def __init__(self, previous: nn.Module, layer: nn.Module, n_earlier: int) -> None:
        super().__init__()
        channels = width(previous)
        self.alpha = nn.Parameter(ALPHA_INIT * torch.rand(n_earlier))
        if isinstance(previous, nn.Conv2d):
            self.project = nn.Conv2d(n_earlier * channels, channels, kernel_size=1)
        else:
            self.project = nn.Linear(n_earlier * channels, channels)
        if isinstance(layer, nn.Conv2d):
            self.map = nn.Conv2d(channels, layer.out_channels, layer.kernel_size, layer.stride,
                                 layer.padding, bias=False)
        else:
            self.map = nn.Linear(layer.in_features, layer.out_features, bias=False)

    def forward(self, earlier: list[torch.Tensor]) -> torch.Tensor:
        scaled = torch.cat([alpha * h for alpha, h in zip(self.alpha, earlier, strict=True)], dim=1)
        hidden = torch.relu(self.project(scaled))
        if isinstance(self.map, nn.Linear):
            hidden = hidden.flatten(1)
        return self.map(hidden)


class Column(nn.Module):
    """One reference net whose layers after the first also take lateral adapters' input."""

    def __init__(self, input_shape, n_earlier: int) -> None:
        super().__init__()
        pairs = reference_layers(input_shape)
        self.layers = nn.ModuleList(layer for layer, _ in pairs)
        self.after = nn.ModuleList(after for _, after in pairs)
        self.adapters = nn.ModuleList(
            LateralAdapter(previous, layer, n_earlier)
            for previous, layer in zip(self.layers[:-1], self.layers[1:], strict=True)
        ) if n_earlier else None

    def forward(self, x: torch.Tensor, earlier: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Every layer's activation (the last is the logits); ``earlier[j][i]`` is layer i's
        activation in earlier column j."""
        activations = []
        for i, (layer, after) in enumerate(zip(self.layers, self.after, strict=True)):
            h = x if i == 0 else activations[-1]
            pre = layer(h.flatten(1) if isinstance(layer, nn.Linear) else h)
            if i > 0 and self.adapters is not None:
                pre = pre + self.adapters[i - 1]([column[i - 1] for column in earlier])
            activations.append(after(pre))
        return activations


class ProgressiveNet(nn.Module):
    """The columns so far; ``forward(x, task_id)`` runs columns 0..task_id and returns the
    logits of column ``task_id``."""

    def __init__(self, input_shape) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.columns = nn.ModuleList()

    def add_column(self) -> Column:
        """Freeze every column so far and add a new, trainable one laterally connected to them."""
        self.requires_grad_(False)
        column = Column(self.input_shape, len(self.columns))
        self.columns.append(column)
        return column

    def forward(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        return run_columns(self.columns[: task_id + 1], x)


def run_columns(columns, x: torch.Tensor,
                earlier: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
    """The logits of the last of ``columns``, each column fed the earlier ones' activations;
    ``earlier`` holds the activations of columns that come before ``columns`` (none if None)."""
    earlier = list(earlier or [])
    for column in columns:
        earlier.append(column(x, earlier))
    return earlier[-1][-1]


@torch.no_grad()
def frozen_activations(columns, inputs: torch.Tensor,
                       batch_size: int = 1024) -> list[list[torch.Tensor]]:
    """Every layer's activation but the logits (all a later column's adapters read) of each
    of ``columns`` on every input, computed batch by batch into tensors allocated once (the
    cache never takes twice its size)."""
    activations: list[list[torch.Tensor]] = []
    for start in range(0, len(inputs) if columns else 0, batch_size):
        x = fast_layout(inputs[start : start + batch_size])
        earlier: list[list[torch.Tensor]] = []
        for column in columns:
            earlier.append(column(x, earlier)[:-1])
        if not activations:
            activations = [[h.new_empty((len(inputs), *h.shape[1:])) for h in layers]
                           for layers in earlier]
        for kept, layers in zip(activations, earlier, strict=True):
            for whole, h in zip(kept, layers, strict=True):
                whole[start : start + len(x)] = h
    return activations


def activation_bytes(first: Column, input_shape) -> int:
    """Bytes of the activations :func:`frozen_activations` keeps per column and input, from
    the ``first`` column (the one without adapters; every column's layers are alike)."""
    with torch.no_grad():
        x = torch.zeros((1, *input_shape), device=next(first.parameters()).device)
        return sum(h.numel() * h.element_size() for h in first(x, [])[:-1])


class PNN(Naive):
    """Naive's training and interface, but a new column per task instead of a new head: earlier
    columns are frozen and feed the new one through lateral adapters."""

    net: ProgressiveNet | None
    scenarios = ("task",)  # a column per task: it needs the task id to answer

    def learn(self, task: Task) -> None:
        if self.net is None:
            self.net = ProgressiveNet(task.input_shape)
        require_input_shape(self.net.input_shape, task, "pnn")
        column = self.net.add_column().to(self.device)
        self.datasets.append(task.dataset)
        self._train_column(column, task)

    def _train_column(self, column: Column, task: Task) -> None:
        """The shared recipe on the new column and its adapters; the earlier columns'
        activations come from the cache (module docstring) as far as it holds them."""
        inputs = normalized(task.x_train, task.dataset)
        frozen = self.net.columns[:-1]
        per_column = activation_bytes(self.net.columns[0], task.input_shape) * max(len(inputs), 1)
        cached = frozen_activations(frozen[: ACTIVATION_CACHE_BYTES // per_column], inputs)
        uncached = self.net.columns[len(cached):]

        def model(index: torch.Tensor) -> torch.Tensor:
            looked_up = [[h.index_select(0, index) for h in kept] for kept in cached]
            return run_columns(uncached, fast_layout(inputs.index_select(0, index)), looked_up)

        self.net.train()
        examples = torch.arange(len(task.y_train), device=task.y_train.device)
        self.last_training = train(model, column.parameters(), examples, task.y_train,
                                   self.recipe)

    def _unseen_model(self, task_id: int, input_shape: tuple[int, ...]):
        """Logits for a task not learned yet: a fresh column drawn for the task id, laterally
        connected to the frozen columns so far (what learning the task would start from)."""
        earlier = [] if self.net is None or self.net.input_shape != input_shape \
            else list(self.net.columns)
        with seeded_for_unseen_task(task_id):
            column = Column(input_shape, len(earlier))
        columns = [*earlier, column.to(self.device).eval()]
        return lambda batch: run_columns(columns, batch)

    def load_state_dict(self, state: dict) -> None:
        self.datasets = list(state["datasets"])
        if not self.datasets:
            return
        self.net = ProgressiveNet(state["input_shape"])
        for _ in self.datasets:
            self.net.add_column()
        self.net.to(self.device).load_state_dict(state["net"])
        self.net.requires_grad_(False)
