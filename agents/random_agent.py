"""The chance-level agent: learns nothing, keeps nothing, answers coin flips."""

from __future__ import annotations

import torch


class RandomAgent:
    """Predicts uniformly random labels; its state is empty, so it stores 0 tensors."""

    def __init__(self, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def learn(self, task) -> None:
        """Nothing to learn."""

    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        return torch.randint(0, 2, (len(x),), generator=self.generator).to(x.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to load."""
