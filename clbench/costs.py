"""Measuring what an update costs: wall seconds, FLOPs and peak device memory.

- Seconds: ``time.perf_counter`` around the call, with ``torch.cuda.synchronize`` on both
  sides on CUDA (kernels run asynchronously) and ``torch.mps.synchronize`` on MPS.
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward matmuls and
  convolutions), which depends on shapes only, not on hardware. The counter intercepts every
  operator and slows it, so FLOPs are counted in a separate *twin* call (see the harness),
  never in the timed one. Its formula for a convolution's backward ignores ``groups`` in the
  weight gradient; :func:`conv_backward_flops` replaces it (see there).
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
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


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


def count_flops(call: Callable[[], Any]) -> int:
    """FLOPs of everything ``call`` runs through PyTorch operators (forward + backward)."""
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        call()
    return int(counter.get_total_flops())


def process_peak_memory_bytes() -> int:
    """Peak resident memory of this process so far (what CPU runs report)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
