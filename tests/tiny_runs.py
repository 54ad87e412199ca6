"""The smallest runs of every built-in agent that still exercise the whole harness.

Two tasks of 60 training and 20 test examples each, one epoch: enough for every call of
the contract (learn, its replay, predict, state round trips), small enough to run every
registered agent in a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clbench.agent import registered_agents

SPLIT = "clbench/SplitMNIST5k-v0"
TINY_STREAM: dict[str, Any] = {"n_tasks": 2, "max_train_per_task": 60, "max_test_per_task": 20}

# Per agent, the keyword arguments that make it one epoch (and TN+EN's encoder small).
TINY_AGENT_KWARGS: dict[str, dict[str, Any]] = {
    "random": {},
    "tnen": {"epochs": 1, "en_max_steps": 20, "en_check_every": 10, "latent_size": 32,
             "chunk_size": 160, "replay_chunks": 64, "refine_epochs": 0},
}


def tiny_kwargs(name: str) -> dict[str, Any]:
    """One epoch of training for a registered agent (every baseline takes ``epochs``)."""
    return TINY_AGENT_KWARGS.get(name, {"epochs": 1})


def builtin_agents() -> list[str]:
    """Every agent this repository registers (third-party plug-ins are not ours to test)."""
    return sorted(name for name, target in registered_agents().items()
                  if target.startswith(("agents.", "baselines.")))


SHADOW_MESSAGE = "the agents/ package of the current directory was imported"


def shadowing_folder(folder: Path) -> Path:
    """A working directory holding its own ``agents/`` and ``baselines/`` packages, which
    raise when imported: the harness and its workers must import the installed ones."""
    for package in ("agents", "baselines"):
        (folder / package).mkdir(parents=True, exist_ok=True)
        (folder / package / "__init__.py").write_text(f"raise ImportError({SHADOW_MESSAGE!r})\n")
    return folder

