"""Measuring what an update costs: wall seconds, FLOPs and peak device memory.

- Seconds: ``time.perf_counter`` around the call, with ``torch.cuda.synchronize`` on both
  sides on CUDA (kernels run asynchronously) and ``torch.mps.synchronize`` on MPS.
- FLOPs: torch's FLOP formulas (``torch.utils.flop_counter``: forward and backward matmuls
  and convolutions), which depend on shapes only, not on hardware. Counting intercepts every
  operator and slows it, so FLOPs are counted in a separate *twin* call (see the harness),
  never in the timed one. :class:`FlopCounter` is torch's ``FlopCounterMode`` without its
  per-module breakdown, which we never read and which cost about as much as the training it
  watched (see there). Torch's formula for a convolution's backward ignores ``groups`` in the
  weight gradient; :func:`conv_backward_flops` replaces it (see there).
- Work the counter cannot see: torch's dispatch modes are thread-local, so the counter
  misses what the agent's own threads or processes run; :mod:`clbench.sealed.counted`
  keeps a counted call on its thread.
- Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the call (reset first); on
  MPS, the driver's allocation after the call; on CPU, PyTorch keeps no allocator statistics,
  so the per-call figure is ``None`` and the result file reports the process's peak resident
  memory instead (``resource.getrusage``).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode, conv_flop_count


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(call: Callable[[], Any], device: torch.device) -> tuple[Any, float, int | None]:
    """Run ``call``; return (its value, wall seconds, peak device bytes or None on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    value = call()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = None
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    elif device.type == "mps":
        peak = int(torch.mps.driver_allocated_memory())
    return value, seconds, peak


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: one forward convolution per gradient asked for.

    Each of the input and weight gradients takes as many multiplications as the forward
    convolution. PyTorch's own formula (``torch.utils.flop_counter.conv_backward_flop``)
    agrees for ``groups == 1`` but ignores ``groups`` in the weight gradient, so it counts a
    grouped convolution's weight gradient ``groups`` times over. That is exactly how
    ``torch.func.vmap`` runs per-sample gradients of a convolution (groups = batch size), so
    without this formula a per-sample-gradient Fisher (EWC) reads as ~40x its real cost.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flops}


# Queries of a tensor's metadata, which torch's counter passes through untouched.
_METADATA_OPS = frozenset({
    torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
    torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
    torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
    torch.ops.aten.sym_size.default, torch.ops.aten.stride.default,
    torch.ops.aten.sym_stride.default, torch.ops.aten.storage_offset.default,
    torch.ops.aten.sym_storage_offset.default, torch.ops.aten.numel.default,
    torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
    torch.ops.prim.layout.default,
})


class _LeanDispatch(_FlopCounterMode):
    """Torch's counting dispatch with the same rules, minus its per-call waste: torch tries
    to decompose every operator on every call and rebuilds its set of metadata queries each
    time; whether an operator decomposes is a property of the operator, so the answer is
    remembered (``direct``: operators that run as they are)."""

    def __init__(self, counter: FlopCounter) -> None:
        super().__init__(counter)
        self.direct: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.direct:
            if func in _METADATA_OPS:
                return NotImplemented
            if isinstance(func, torch._ops.HigherOrderOperator):
                return self._handle_higher_order_ops(func, types, args, kwargs)
            if func is not torch.ops.prim.device.default:
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            self.direct.add(func)
        out = func(*args, **kwargs)
        return self.counter._count_flops(func._overloadpacket, out, args, kwargs)


class FlopCounter(FlopCounterMode):
    """``FlopCounterMode`` that counts one total, not one per module.

    Torch's counter also attributes every operator's FLOPs to the modules it runs in, through
    hooks on every module call and on the backward graph; measured on naive's training loop
    (reference net, batch 64, CPU) that bookkeeping made a counted learn cost 2.2-2.8x the
    uncounted one, against 1.45x without it. Same formulas, same total (tested against
    ``FlopCounterMode``)."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=FLOP_FORMULAS)

    def __enter__(self) -> FlopCounter:
        self.flop_counts.clear()
        self.mode = _LeanDispatch(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self.mode.__exit__(*args)
        self.mode = None

    def _count_flops(self, func_packet, out, args, kwargs):
        formula = self.flop_registry.get(func_packet)
        if formula is not None:
            self.flop_counts["Global"][func_packet] += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(call: Callable[[], Any]) -> int:
    """FLOPs of everything ``call`` runs through PyTorch operators (forward + backward)."""
    with FlopCounter() as counter:
        call()
    return int(counter.get_total_flops())


def process_peak_memory_bytes() -> int:
    """Peak resident memory of this process so far: the harness's, in a sealed run not the
    agent's (its workers are other processes; resumed runs count this session only)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
