"""Storing a module's weights in fewer bytes: float32, float16, bfloat16 or symmetric int8.

``quantize`` turns a module's parameters into the tensors to keep in a state; the inverse,
``dequantize_into``, writes them back as float32, so whoever loads a state computes with
exactly the rounded weights that were stored. Used by the ``independent`` baseline (one
network per task) and by TN+EN (its encoding network).

int8 is symmetric linear quantisation, ``w ~= scale * q`` with ``q`` an int8 in [-127, 127]
and ``scale = max|w| / 127``, so each weight is off by at most ``scale / 2``. With
``int8_scale="channel"`` a weight matrix or kernel gets one scale per output channel (row);
with ``"tensor"`` one scale for the whole tensor. Bias vectors always get one scale per
tensor. Scales are stored as float32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

DTYPES = ("float32", "float16", "bfloat16", "int8")
INT8_SCALES = ("channel", "tensor")
INT8_MAX = 127


def channels(weight: torch.Tensor, per_channel: bool) -> int:
    """How many int8 scales a tensor gets: one per output channel (dim 0) of a weight matrix or
    kernel when ``per_channel``, else one (always one for a bias vector)."""
    return weight.shape[0] if per_channel and weight.dim() > 1 else 1


def symmetric_scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """float32 scale(s) ``max|w| / 127`` for symmetric int8, flat, one per :func:`channels`;
    an all-zero channel gets scale 1 so that it still dequantises to zeros."""
    peak = weight.detach().abs().reshape(channels(weight, per_channel), -1).amax(dim=1)
    scale = peak.to(torch.float32) / INT8_MAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def broadcastable(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return scale.view(-1, *[1] * (weight.dim() - 1))


def quantize(module: nn.Module, dtype: str, int8_scale: str = "channel") -> dict[str, torch.Tensor]:
    """``module``'s weights, flattened (in ``parameters()`` order) and stored in ``dtype``:
    ``{"weights"}`` for the float dtypes, ``{"values", "scales"}`` (int8, float32) for int8.
    One flat tensor per kind keeps the serialised overhead to a few hundred bytes."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    weights = [p.detach() for p in module.parameters()]
    if dtype != "int8":
        return {"weights": parameters_to_vector(weights).to(getattr(torch, dtype)).cpu()}
    scales = [symmetric_scale(w, int8_scale == "channel") for w in weights]
    values = [torch.round(w / broadcastable(s, w)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
              for w, s in zip(weights, scales, strict=True)]
    return {"values": torch.cat([v.flatten() for v in values]).cpu(),
            "scales": torch.cat(scales).cpu()}


@torch.no_grad()
def dequantize_into(module: nn.Module, stored: dict[str, torch.Tensor],
                    int8_scale: str = "channel") -> nn.Module:
    """Write :func:`quantize`'s stored weights, as float32, into ``module`` (same layout)."""
    device = next(module.parameters()).device
    if "weights" in stored:
        vector_to_parameters(stored["weights"].to(device, torch.float32), module.parameters())
        return module
    value_at = scale_at = 0
    for weight in module.parameters():
        n_scales = channels(weight, int8_scale == "channel")
        values = stored["values"][value_at : value_at + weight.numel()].view_as(weight)
        scales = stored["scales"][scale_at : scale_at + n_scales].to(device)
        weight.copy_(values.to(device, torch.float32) * broadcastable(scales, weight))
        value_at, scale_at = value_at + weight.numel(), scale_at + n_scales
    return module


def round_to_storage(module: nn.Module, dtype: str, int8_scale: str = "channel") -> nn.Module:
    """Put ``module``'s weights on the grid that storing them in ``dtype`` rounds them to."""
    return dequantize_into(module, quantize(module, dtype, int8_scale), int8_scale)
