"""The encoding network (PAPER.md, "Idea": the EN): one contractive autoencoder whose latent
vectors store every skill (Rifai et al., 2011).

Two forms of the contractive penalty, per example:

- ``"exact"`` (clbench's default preset): the squared Frobenius norm of d latent / d input
  for these layers, J = diag(s_K) W_K ... diag(s_1) W_1, s_k the derivative of layer k's
  nonlinearity;
- ``"closed_form"`` (the authors' code, the paper preset): sum_j (h_j (1 - h_j))^2 |W_j|^2,
  h the latent units and W_j the row of the last encoder layer's weights that produces
  h_j. That is the exact norm of a one-layer *sigmoid* encoder; the authors apply it as
  written to tanh units and to the last layer only, and it costs next to nothing beside the
  EN's own matrix products (PAPER.md, "Settings in the authors' public code").
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn

PENALTIES = ("exact", "closed_form")


class ContractiveAutoencoder(nn.Module):
    """input -> hidden... -> latent (each tanh or sigmoid) -> hidden... -> input (linear out)."""

    def __init__(self, input_size: int, hidden_sizes, latent_size: int, activation: str,
                 penalty: str = "exact") -> None:
        super().__init__()
        if activation not in ("tanh", "sigmoid"):
            raise ValueError(f"activation={activation!r}: the EN supports 'tanh' or 'sigmoid'")
        if penalty not in PENALTIES:
            raise ValueError(f"penalty={penalty!r}: choose one of {', '.join(PENALTIES)}")
        self.activation = torch.tanh if activation == "tanh" else torch.sigmoid
        self.is_tanh = activation == "tanh"
        self.penalty = penalty
        sizes = [input_size, *hidden_sizes, latent_size]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes[::-1]))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContractiveAutoencoder:
        """The EN a TNEN preset (or overrides of one) describes."""
        return cls(config["chunk_size"], config["hidden_sizes"], config["latent_size"],
                   config["activation"], config["penalty"])

    def _slope(self, h: torch.Tensor) -> torch.Tensor:
        """Derivative of the nonlinearity, written in terms of its output ``h``."""
        return 1 - h * h if self.is_tanh else h * (1 - h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = self.activation(layer(x))
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.decoder[:-1]:
            z = self.activation(layer(z))
        return self.decoder[-1](z)

    def encode_with_penalty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, per-example contractive penalty in this EN's form, before lambda)."""
        slopes = []
        for layer in self.encoder:
            x = self.activation(layer(x))
            slopes.append(self._slope(x))
        weights = [layer.weight for layer in self.encoder]
        if self.penalty == "closed_form":
            return x, (x * (1 - x)).pow(2) @ weights[-1].pow(2).sum(1)
        if len(weights) == 1:  # J = diag(s) W: sum_j s_j^2 |W_j|^2, no Jacobian materialised
            return x, (slopes[0] ** 2) @ weights[0].pow(2).sum(1)
        jacobian = slopes[-1].unsqueeze(2) * weights[-1]
        for weight, slope in zip(weights[-2::-1], slopes[-2::-1], strict=True):
            jacobian = (jacobian * slope.unsqueeze(1)) @ weight
        return x, jacobian.pow(2).sum((1, 2))
