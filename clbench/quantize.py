"""Storing a module's weights in fewer bytes: float32, float16, bfloat16, int8 or int4.

``quantize`` turns a module's parameters into the tensors to keep in a state; the inverse,
``dequantize_into``, writes them back as float32, so whoever loads a state computes with
exactly the rounded weights that were stored. Used by the ``independent`` baseline (one
network per task) and by TN+EN (its encoding network).

int8 and int4 are symmetric linear quantisation, ``w ~= scale * q`` with ``q`` a whole
number in [-Q, Q] (Q = 127 for int8, 7 for int4) and ``scale = max|w| / Q``, so each weight
is off by at most ``scale / 2``. With ``int8_scale="channel"`` (the name is kept from when
int8 was the only integer type; it applies to int4 too) a weight matrix or kernel gets one
scale per output channel (row); with ``"tensor"`` one scale for the whole tensor. Bias
vectors always get one scale per tensor. Scales are stored as float32. int4 values are
packed two per byte (``q + 8`` in the low nibble, the next in the high nibble; an odd count
is padded with one zero value), so P weights take ``ceil(P / 2)`` bytes.

With ``base`` (a module of the same layout), what is stored is the change ``w - w_base``,
and dequantising adds it back: storing a network as its difference from a known start (a
seeded initialisation that can be regenerated for free) spends the bits on what training
changed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

DTYPES = ("float32", "float16", "bfloat16", "int8", "int4")
INTEGER_LEVELS = {"int8": 127, "int4": 7}  # Q: the largest |q| of each integer dtype
INT8_SCALES = ("channel", "tensor")
INT8_MAX = INTEGER_LEVELS["int8"]
INT4_MAX = INTEGER_LEVELS["int4"]
INT4_OFFSET = 8  # a stored nibble is q + 8, in [1, 15]


def channels(weight: torch.Tensor, per_channel: bool) -> int:
    """How many scales a tensor gets: one per output channel (dim 0) of a weight matrix or
    kernel when ``per_channel``, else one (always one for a bias vector)."""
    return weight.shape[0] if per_channel and weight.dim() > 1 else 1


def symmetric_scale(weight: torch.Tensor, per_channel: bool,
                    levels: int = INT8_MAX) -> torch.Tensor:
    """float32 scale(s) ``max|w| / levels``, flat, one per :func:`channels`; an all-zero
    channel gets scale 1 so that it still dequantises to zeros."""
    peak = weight.detach().abs().reshape(channels(weight, per_channel), -1).amax(dim=1)
    scale = peak.to(torch.float32) / levels
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def broadcastable(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return scale.view(-1, *[1] * (weight.dim() - 1))


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Whole numbers in [-7, 7] -> uint8, two per byte (module docstring)."""
    nibbles = (values.to(torch.int16) + INT4_OFFSET).to(torch.uint8)
    if len(nibbles) % 2:
        nibbles = torch.cat([nibbles, nibbles.new_full((1,), INT4_OFFSET)])
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` values :func:`pack_int4` packed, as int8."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:count]
    return (nibbles.to(torch.int16) - INT4_OFFSET).to(torch.int8)


def _weights(module: nn.Module, base: nn.Module | None) -> list[torch.Tensor]:
    weights = [p.detach() for p in module.parameters()]
    if base is None:
        return weights
    return [w - b.detach().to(w.device) for w, b in zip(weights, base.parameters(), strict=True)]


def quantize(module: nn.Module, dtype: str, int8_scale: str = "channel",
             base: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """``module``'s weights (or their change from ``base``'s), flattened in ``parameters()``
    order and stored in ``dtype``: ``{"weights"}`` for the float dtypes, ``{"values",
    "scales"}`` for int8 (int8 values) and int4 (packed uint8 values), scales float32.
    One flat tensor per kind keeps the serialised overhead to a few hundred bytes."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    if int8_scale not in INT8_SCALES:
        raise ValueError(f"int8_scale={int8_scale!r}: choose one of {', '.join(INT8_SCALES)}")
    weights = _weights(module, base)
    if dtype not in INTEGER_LEVELS:
        return {"weights": parameters_to_vector(weights).to(getattr(torch, dtype)).cpu()}
    levels = INTEGER_LEVELS[dtype]
    scales = [symmetric_scale(w, int8_scale == "channel", levels) for w in weights]
    values = torch.cat([torch.round(w / broadcastable(s, w)).clamp(-levels, levels).flatten()
                        for w, s in zip(weights, scales, strict=True)]).to(torch.int8)
    if dtype == "int4":
        values = pack_int4(values)
    return {"values": values.cpu(), "scales": torch.cat(scales).cpu()}


@torch.no_grad()
def dequantize_into(module: nn.Module, stored: dict[str, torch.Tensor],
                    int8_scale: str = "channel", base: nn.Module | None = None) -> nn.Module:
    """Write :func:`quantize`'s stored weights, as float32, into ``module`` (same layout);
    with ``base``, the stored change is added to ``base``'s weights."""
    device = next(module.parameters()).device
    parameters = list(module.parameters())
    if "weights" in stored:
        vector_to_parameters(stored["weights"].to(device, torch.float32), parameters)
    else:
        count = sum(p.numel() for p in parameters)
        values = stored["values"]
        if values.dtype == torch.uint8:  # int4, two per byte
            values = unpack_int4(values, count)
        value_at = scale_at = 0
        for weight in parameters:
            n_scales = channels(weight, int8_scale == "channel")
            chunk = values[value_at : value_at + weight.numel()].view_as(weight)
            scales = stored["scales"][scale_at : scale_at + n_scales].to(device)
            weight.copy_(chunk.to(device, torch.float32) * broadcastable(scales, weight))
            value_at, scale_at = value_at + weight.numel(), scale_at + n_scales
    if base is not None:
        for weight, start in zip(parameters, base.parameters(), strict=True):
            weight.add_(start.detach().to(device))
    return module


def round_to_storage(module: nn.Module, dtype: str, int8_scale: str = "channel") -> nn.Module:
    """Put ``module``'s weights on the grid that storing them in ``dtype`` rounds them to."""
    return dequantize_into(module, quantize(module, dtype, int8_scale), int8_scale)
