"""Flatten, chunk and pack (PAPER.md, "Arbitrary sizes"): a network of m parameters is cut
into chunks of the EN's input size n (zero-padded), each with its own latent; latents are
stored on a grid of a few bits (or as floats) and packed into bytes."""

from __future__ import annotations

import torch

LATENT_BITS = (4, 8, 16, 32)  # 4 and 8: a uniform grid on [-1, 1]; 16, 32: floats


def to_chunks(vector: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``vector`` zero-padded to a multiple of ``chunk_size`` and cut into rows of that size."""
    n_chunks = -(-vector.numel() // chunk_size)
    padded = vector.new_zeros(n_chunks * chunk_size)
    padded[: vector.numel()] = vector
    return padded.view(n_chunks, chunk_size)


def from_chunks(chunks: torch.Tensor, length: int) -> torch.Tensor:
    """Undo :func:`to_chunks`: the first ``length`` numbers of the concatenated chunks."""
    return chunks.reshape(-1)[:length]


def grid_levels(bits: int) -> int:
    """Number of grid steps on each side of 0 for a ``bits``-bit latent (0: stored as float)."""
    return 2 ** (bits - 1) - 1 if bits <= 8 else 0


def quantize_latents(latents: torch.Tensor, bits: int) -> torch.Tensor:
    """Latents rounded exactly as storing them with ``bits`` bits rounds them (as float32)."""
    levels = grid_levels(bits)
    if levels:
        return (latents * levels).round().clamp(-levels, levels) / levels
    return latents.to(torch.float16 if bits == 16 else torch.float32).float()


def pack_latents(latents: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantised latents in their storage form: int8 codes, two 4-bit codes per uint8, or
    float16/float32 values. :func:`unpack_latents` is its exact inverse."""
    levels = grid_levels(bits)
    if not levels:
        return latents.to(torch.float16 if bits == 16 else torch.float32).cpu()
    codes = (latents * levels).round().clamp(-levels, levels).to(torch.int16).reshape(-1)
    if bits == 8:
        return codes.to(torch.int8).cpu()
    nibbles = (codes + levels).to(torch.uint8)
    if len(nibbles) % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).cpu()


def unpack_latents(stored: torch.Tensor, bits: int, shape: tuple[int, int]) -> torch.Tensor:
    levels = grid_levels(bits)
    if not levels:
        return stored.float().reshape(shape)
    if bits == 8:
        codes = stored.to(torch.int16)
    else:
        codes = torch.stack([stored & 15, stored >> 4], dim=1).reshape(-1).to(torch.int16) - levels
    return (codes[: shape[0] * shape[1]].float() / levels).reshape(shape)


def cosine_and_error(recon: torch.Tensor, target: torch.Tensor, owner: torch.Tensor,
                     n_owners: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-owner cosine similarity and relative error of chunk rows grouped by ``owner``."""
    def per_owner(values):
        return torch.zeros(n_owners, device=values.device).index_add_(0, owner, values)
    dot = per_owner((recon * target).sum(1))
    recon_sq, target_sq = per_owner(recon.pow(2).sum(1)), per_owner(target.pow(2).sum(1))
    error_sq = per_owner((recon - target).pow(2).sum(1))
    tiny = torch.finfo(torch.float32).tiny
    cosine = dot / (recon_sq.sqrt() * target_sq.sqrt()).clamp_min(tiny)
    return cosine, (error_sq / target_sq.clamp_min(tiny)).sqrt()
