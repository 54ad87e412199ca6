"""The paper's experiments (Self-Net, Mandivarapu et al. 2020), reproduced with TN+EN.

``clbench paper NAME --seeds 0,1,2`` runs one experiment (``robustness``, ``batch``,
``continual``, ``split``, ``mixed``, or ``all``) once per seed and writes one record per
seed, ``NAME-seedS.json`` (a finished seed is never lost to a later failure), then PNG plots
and ``NAME.md`` (its section) into ``leaderboard/paper/`` and regenerates
``leaderboard/paper/README.md``, which puts the measured numbers beside the paper's claims
with the rule each verdict follows (``verdicts.py``).
``clbench paper report`` regenerates every section, plot and the README from the JSON files
alone. Sizes: ``reduced`` (default: offline on mnist5k, minutes on a CPU), ``full`` (the
paper's sizes, on the full datasets) and ``tiny`` (for the tests).

This layer lives inside the agent's package: it imports the agent and the benchmark, the
benchmark imports neither (the ``clbench paper`` command plugs in through the
``clbench.commands`` entry-point group, ``cli.py``). The batch and splitting experiments
store their networks through the agent's own ``prepare`` / ``store`` (one code path).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch

from clbench.devices import resolve_device

EXPERIMENTS = ("robustness", "batch", "continual", "split", "mixed")
DEFAULT_FOLDER = Path("leaderboard") / "paper"


def experiment_module(name: str) -> ModuleType:
    """The module of experiment ``name``; a clear error lists the experiments otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"agents.tnen.paper.{name}")


def run_experiment(name: str, size: str = "reduced", seed: int = 0, device: str = "cpu",
                   data_root: str | None = None, folder: str | Path = DEFAULT_FOLDER,
                   report: bool = True) -> Path:
    """Run experiment ``name`` at ``size`` with ``seed``, save its record into ``folder`` and
    (with ``report``) regenerate the sections and README there. Returns the record's path."""
    from agents.tnen.paper import common
    from agents.tnen.paper import report as reporting

    module = experiment_module(name)
    settings = common.settings_for(module.SIZES, size)
    dev = str(resolve_device(device))
    torch.manual_seed(seed)
    record = common.make_record(name, size, seed, dev, settings,
                                lambda: module.run(settings, seed, dev, data_root))
    path = common.save_record(Path(folder), record)
    if report:
        reporting.write_report(Path(folder))
    return path


__all__ = ["DEFAULT_FOLDER", "EXPERIMENTS", "experiment_module", "run_experiment"]
