"""Train K networks of one architecture at once, each on its own data, in one step per batch.

Where independent networks train side by side (TN+EN's batch encoding of many task
networks, the reference runs of ``joint`` and ``independent``, tuning grids over seeds),
:func:`train_together` replaces K separate training loops with one: the K networks'
parameters are stacked (``torch.func.stack_module_state``'s layout, one leading dimension of
size K), each step gathers one minibatch per network, runs all K forward and backward passes
as one, and applies SGD with momentum to every network at once. It gives the same networks
as :func:`train_one_by_one` (the plain loop, K times) up to float rounding: the grouped
kernels add the same products in another order (see ``tests/test_vectorized.py`` for the
tolerance).

How the K forward passes become one:

- ``nn.Sequential`` nets of ``Conv2d``, ``Linear``, ``Flatten`` and channel-wise layers
  (pooling, activations) -- the reference nets -- run as one *grouped* net: the K inputs are
  stacked along channels and each convolution becomes one convolution with ``groups=K``
  (channels-last on CPU), each linear layer one batched matrix multiply;
- any other module runs through ``torch.func.functional_call`` under ``torch.func.vmap``.

Usage, K networks on K tasks (or K seeds on one task: pass the same task K times)::

    nets = [reference_net(task.input_shape) for task in tasks]
    train_together(nets, tasks, epochs=1, lr=0.01, momentum=0.5, batch_size=64)
    # nets[k] now holds what training it alone on tasks[k] would have given

Streams of different lengths are fine: a network whose stream has ended stops changing
(its batches are padded and masked out of the loss, its update masked out of the step).
Minibatch orders are drawn exactly as the one-by-one loop draws them (each network's
``generator``, or the global RNG in network order), so both see the same batches.

When it pays (``benchmarks/vectorized_speed.py``, K = 32 MNIST nets on 32 tuple tasks, one
CPU thread, loaded 2-core machine): at batch 64 together is *slower* than one by one (0.70x):
the reference nets' convolutions are compute-bound there, and 32 networks' activations at
once (47 MB for the first layer) leave the caches that one network's fit in. With small
batches, where per-step overhead dominates, it gains (1.29x at batch 16, 1.39x at batch 8).
On a GPU, where one step of K networks launches as many kernels as one network, the gain
should be far larger; it is not measured yet. So on CPU, use it for small per-network
batches or small nets, and train batch-64 conv nets one by one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from clbench.tasks import Task
from clbench.training import minibatches, normalized, sgd

# Layers that act on each channel (or each value) alone: on K networks' channels stacked
# side by side they act on each network alone.
CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
               nn.GELU, nn.Identity)


def _layers(net: nn.Module) -> list[nn.Module] | None:
    """The flat layer list of a Sequential net the grouped form supports, else None."""
    if not isinstance(net, nn.Sequential):
        return None
    layers: list[nn.Module] = []
    for layer in net:
        inner = _layers(layer) if isinstance(layer, nn.Sequential) else [layer]
        if inner is None or not all(
                isinstance(m, (nn.Conv2d, nn.Linear, nn.Flatten, *CHANNELWISE)) for m in inner):
            return None
        if any(isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros")
               for m in inner):
            return None
        if any(isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1) for m in inner):
            return None
        layers += inner
    return layers


class NetworkStack:
    """K networks of one architecture as stacked parameters ``(K, *shape)``, run as one.

    :meth:`forward` maps inputs ``(K, B, *input_shape)`` to outputs ``(K, B, ...)``, network k
    on ``inputs[k]``; :meth:`write_back` copies the trained parameters into the K networks.
    Networks with buffers (batch norm statistics) are not supported: their buffers would
    need per-network updates that the stacked form does not make.
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        if not nets:
            raise ValueError("NetworkStack needs at least one network")
        if any(True for net in nets for _ in net.buffers()):
            raise ValueError("NetworkStack: networks with buffers (e.g. batch norm) are not "
                             "supported; train them one by one")
        shapes = [[(name, p.shape) for name, p in net.named_parameters()] for net in nets]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("NetworkStack: every network must have the same architecture "
                             "(the same parameter names and shapes)")
        self.nets = list(nets)
        stacked, _ = stack_module_state(self.nets)
        self.params = {name: value.detach().requires_grad_() for name, value in stacked.items()}
        self.layers = _layers(self.nets[0])
        self.base = copy.deepcopy(self.nets[0]).to("meta")

    def __len__(self) -> int:
        return len(self.nets)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            return vmap(lambda params, x: functional_call(self.base, params, (x,)))(
                self.params, inputs)
        return self._grouped_forward(inputs)

    __call__ = forward

    def _grouped_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        k, batch = inputs.shape[:2]
        names = iter(self.params)
        if inputs.dim() == 5:  # images: stack the K networks' channels, channels-last on CPU
            channels, height, width = inputs.shape[2:]
            layout = torch.channels_last if inputs.device.type == "cpu" else torch.contiguous_format
            h = inputs.transpose(0, 1).reshape(batch, k * channels, height, width)
            h = h.contiguous(memory_format=layout)
        else:
            h = inputs
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                weight = self.params[next(names)]
                bias = self.params[next(names)] if layer.bias is not None else None
                h = F.conv2d(h, weight.flatten(0, 1), None if bias is None else bias.flatten(),
                             layer.stride, layer.padding, layer.dilation, groups=k)
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(batch, k, -1).transpose(0, 1) if h.dim() == 4 else h
            elif isinstance(layer, nn.Linear):
                weight = self.params[next(names)]
                h = torch.bmm(h, weight.transpose(1, 2))
                if layer.bias is not None:
                    h = h + self.params[next(names)].unsqueeze(1)
            else:
                h = layer(h)
        return h

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each network's slice of the stacked parameters into that network."""
        for index, net in enumerate(self.nets):
            for name, p in net.named_parameters():
                p.copy_(self.params[name][index])


def _orders(tasks: Sequence[Task], epochs: int, batch_size: int,
            generators: Sequence[torch.Generator | None]) -> list[list[torch.Tensor]]:
    """Each network's minibatch indices, step by step, drawn as the one-by-one loop draws
    them (network after network, epoch after epoch)."""
    orders = []
    for task, generator in zip(tasks, generators, strict=True):
        steps = []
        for _ in range(epochs):
            order = torch.randperm(len(task.y_train), generator=generator)
            steps += list(order.split(batch_size))
        orders.append(steps)
    return orders


def train_together(
    nets: Sequence[nn.Module],
    tasks: Sequence[Task],
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    generators: Sequence[torch.Generator | None] | None = None,
) -> None:
    """Train ``nets[k]`` on ``tasks[k]`` for every k at once; the nets are updated in place.

    The same as :func:`train_one_by_one` with the same arguments (to float rounding):
    ``epochs`` shuffled epochs of ``batch_size``, mean cross-entropy of each network's 2-way
    (or n-way) logits, SGD with ``momentum`` (PyTorch's rule: the first step's buffer is the
    gradient), a fresh optimiser state per network. ``generators[k]`` draws network k's
    batch order (None: the global RNG, drawn in network order as the loop would).
    """
    if len(nets) != len(tasks):
        raise ValueError(f"train_together: {len(nets)} networks but {len(tasks)} tasks; "
                         "give one task (data stream) per network")
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"train_together: need batch_size >= 1 and epochs >= 0; got "
                         f"batch_size={batch_size}, epochs={epochs}")
    generators = list(generators) if generators is not None else [None] * len(nets)
    stack = NetworkStack(nets)
    orders = _orders(tasks, epochs, batch_size, generators)
    # One gather per step from all K tasks' normalised inputs, laid end to end.
    unique = list({id(task.x_train): task for task in tasks}.values())
    offsets, start = {}, 0
    for task in unique:
        offsets[id(task.x_train)] = start
        start += len(task.y_train)
    inputs = torch.cat([normalized(task.x_train, task.dataset) for task in unique])
    labels = torch.cat([task.y_train for task in unique])
    device = inputs.device
    k, n_steps = len(nets), max(len(steps) for steps in orders)
    # Per step and network: the rows to gather (padded with row 0 of the network's task), each
    # row's weight in the loss (1 / batch length, 0 on padding) and whether the network steps.
    index = torch.zeros(n_steps, k, batch_size, dtype=torch.int64)
    weight = torch.zeros(n_steps, k, batch_size)
    active = torch.zeros(n_steps, k)
    for net_index, (task, steps) in enumerate(zip(tasks, orders, strict=True)):
        index[:, net_index] = offsets[id(task.x_train)]
        for step, batch in enumerate(steps):
            index[step, net_index, :len(batch)] += batch
            weight[step, net_index, :len(batch)] = 1.0 / len(batch)
            active[step, net_index] = 1.0
    index, weight, active = index.to(device), weight.to(device), active.to(device)
    params = list(stack.params.values())
    buffers = [torch.zeros_like(p) for p in params]
    masks = [[active[step].view(-1, *[1] * (p.dim() - 1)) for p in params]
             for step in range(n_steps)]
    for step in range(n_steps):
        rows = index[step].flatten()
        x = inputs.index_select(0, rows).view(k, batch_size, *inputs.shape[1:])
        losses = F.cross_entropy(stack(x).flatten(0, 1), labels.index_select(0, rows),
                                 reduction="none")
        gradients = torch.autograd.grad((losses * weight[step].flatten()).sum(), params)
        with torch.no_grad():
            for p, buffer, gradient, mask in zip(params, buffers, gradients, masks[step],
                                                 strict=True):
                # Networks whose stream has ended keep their buffer and their weights.
                buffer.copy_(torch.where(mask.bool(), buffer * momentum + gradient, buffer))
                p.sub_(buffer * mask, alpha=lr)
    stack.write_back()


def train_one_by_one(
    nets: Sequence[nn.Module],
    tasks: Sequence[Task],
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    generators: Sequence[torch.Generator | None] | None = None,
) -> None:
    """The reference semantics of :func:`train_together`: the plain loop, network after
    network (shared minibatches, mean cross-entropy, SGD with momentum)."""
    generators = list(generators) if generators is not None else [None] * len(nets)
    for net, task, generator in zip(nets, tasks, generators, strict=True):
        optimizer = sgd(net.parameters(), lr=lr, momentum=momentum)
        for _ in range(epochs):
            for x, y in minibatches(task.x_train, task.y_train, task.dataset, batch_size,
                                    generator):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                optimizer.step()
