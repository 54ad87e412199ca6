"""Measuring what an update costs: wall seconds, FLOPs and peak device memory.

- Seconds: ``time.perf_counter`` around the call, with ``torch.cuda.synchronize`` on both
  sides on CUDA (kernels run asynchronously) and ``torch.mps.synchronize`` on MPS.
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward matmuls and
  convolutions), which depends on shapes only, not on hardware. The counter intercepts every
  operator and slows it, so FLOPs are counted in a separate *twin* call (see the harness),
  never in the timed one.
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
from torch.utils.flop_counter import FlopCounterMode


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


def count_flops(call: Callable[[], Any]) -> int:
    """FLOPs of everything ``call`` runs through PyTorch operators (forward + backward)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def process_peak_memory_bytes() -> int:
    """Peak resident memory of this process so far (what CPU runs report)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
