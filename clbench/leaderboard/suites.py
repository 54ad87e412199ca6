"""Suites: named lists of task streams (env id + make() kwargs) that agents are compared on.

The scenario of an entry is its ``scenario`` kwarg (van de Ven & Tolias 2019; ``"task"``,
the task-incremental default, when absent). An agent declares the scenarios it supports in
a class attribute ``scenarios`` (default ``("task",)``); a sweep skips the entries whose
scenario an agent does not support.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any

import gymnasium
from gymnasium.envs.registration import load_env_creator

import clbench  # noqa: F401  (registers the environments)
from clbench.agent import registered_agents

DEFAULT_SCENARIO = "task"


def folder_name(name: str, kwargs: dict[str, Any]) -> str:
    """``name`` and ``kwargs`` as one readable, filesystem-safe folder name, the same for the
    same kwargs in any order: ``name__key-value__key-value`` (keys sorted; every run of
    characters other than letters, digits and ``.`` in a value becomes ``_``)."""
    for key, value in sorted(kwargs.items()):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        name += f"__{key}-{re.sub(r'[^A-Za-z0-9.]+', '_', text).strip('_')}"
    return name


@dataclass(frozen=True)
class Entry:
    """One stream of a suite: ``gymnasium.make(env_id, **kwargs)``."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def scenario(self) -> str:
        return self.kwargs.get("scenario", DEFAULT_SCENARIO)

    @property
    def folder(self) -> str:
        """A readable folder name, distinct for distinct kwargs: ``SplitMNIST5k-v0`` or
        ``SplitMNIST5k-v0__scenario-domain``."""
        return folder_name(self.env_id.split("/")[-1], self.kwargs)

    @property
    def label(self) -> str:
        """``clbench/SplitMNIST5k-v0 scenario=domain``: how tables and messages name it."""
        return " ".join([self.env_id, *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                        for k, v in sorted(self.kwargs.items()))])

    def with_kwargs(self, overrides: dict[str, Any]) -> Entry:
        """This entry with some make() kwargs changed (a new, distinctly named entry)."""
        return Entry(self.env_id, {**self.kwargs, **overrides})

    def unsupported_kwargs(self) -> list[str]:
        """The kwargs this clbench's environment does not accept (e.g. ``scenario`` before
        the domain-incremental scenario exists); checked without loading any data."""
        try:
            spec = gymnasium.spec(self.env_id)
        except gymnasium.error.Error as error:
            return [f"(unknown environment: {error})"]
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(
            spec.entry_point)
        parameters = inspect.signature(creator).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return []
        return [key for key in self.kwargs if key not in parameters]


def _entries(*specs: tuple[str, dict[str, Any]] | str) -> tuple[Entry, ...]:
    return tuple(Entry(spec) if isinstance(spec, str) else Entry(*spec) for spec in specs)


DOMAIN = {"scenario": "domain"}

SUITES: dict[str, tuple[Entry, ...]] = {
    "offline": _entries(
        "clbench/SplitMNIST5k-v0",
        "clbench/OneVsRestMNIST5k-v0",
        ("clbench/TupleMNIST5k-v0", {"n_tasks": 50}),
        ("clbench/SplitMNIST5k-v0", DOMAIN),
    ),
    "fashion": _entries(
        "clbench/SplitFashionMNIST-v0",
        ("clbench/SplitFashionMNIST-v0", DOMAIN),
        "clbench/OneVsRestFashionMNIST-v0",
    ),
    "storage": _entries(
        ("clbench/TupleMNIST5k-v0", {"n_tasks": 10}),
        ("clbench/TupleMNIST5k-v0", {"n_tasks": 100}),
    ),
    "standard": _entries(
        "clbench/SplitMNIST-v0",
        "clbench/SplitCIFAR10-v0",
        "clbench/SplitCIFAR100-v0",
    ),
    "paper": _entries(
        "clbench/OneVsRestMNIST-v0",
        ("clbench/TupleMNIST-v0", {"n_tasks": 333}),
        "clbench/OneVsRestCIFAR10-v0",
        "clbench/MixedMNISTCIFAR10-v0",
    ),
}

DESCRIPTIONS = {
    "offline": "built-in mnist5k streams; run anywhere, no download",
    "fashion": "Fashion-MNIST; offline wherever Debian's dataset-fashion-mnist is installed",
    "storage": "TN+EN against the storage comparators as skills accumulate: 10 and 100 "
               "TupleMNIST5k tasks (built-in data)",
    "standard": "the literature's Split MNIST / CIFAR-10 / CIFAR-100 (full datasets)",
    "paper": "the streams of the TN+EN paper (full MNIST and CIFAR-10)",
}


# What a sweep runs when no --agents is given: every registered agent (by name) and then
# these variants, the storage comparators TN+EN needs: one independent network per task
# stored in int8, in int4, and as the int4 change from one shared seeded initialisation
# (TN+EN's two storage tricks without its autoencoder, so the rows say what the autoencoder
# adds). int8 + delta is left out: it stores exactly int8's bytes (see the storage formulas
# in baselines/independent.py), so it cannot move a row along the bytes axis, and every
# variant costs one run per entry and seed. Spec syntax: clbench.leaderboard.variants.
STORAGE_COMPARATORS = (
    "independent[dtype=int8]",
    "independent[dtype=int4]",
    "independent[dtype=int4,delta=true]",
)


# Suites that compare a few agents rather than all of them: ``storage`` asks what TN+EN's
# autoencoder adds over its storage comparators (and over the two smallest states of the
# offline tables, LwF's and linear's) on long streams, where every other agent's run would
# cost hours (joint relearns every task seen; A-GEM and replay grow with the stream).
SUITE_AGENTS: dict[str, tuple[str, ...]] = {
    "storage": ("tnen", "independent", *STORAGE_COMPARATORS, "lwf", "linear"),
}


def default_agents(suite: str | None = None) -> list[str]:
    """The agent specs of a sweep of ``suite`` without ``--agents``: the suite's own list
    (:data:`SUITE_AGENTS`) where it has one, else every agent registered in the
    ``clbench.agents`` group, by name, then :data:`STORAGE_COMPARATORS`."""
    if suite in SUITE_AGENTS:
        return list(SUITE_AGENTS[suite])
    return sorted(registered_agents()) + list(STORAGE_COMPARATORS)


def get_suite(name: str) -> tuple[Entry, ...]:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}") from None
