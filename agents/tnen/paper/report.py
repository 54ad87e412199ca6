"""Regenerate ``leaderboard/paper/`` from its JSON records alone: every experiment's section
(``NAME.md`` and its PNG plots) and ``README.md``, which sets our numbers beside the paper's
claims experiment by experiment. No number in these files is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from agents.tnen import ContractiveAutoencoder
from agents.tnen.paper import EXPERIMENTS, experiment_module
from agents.tnen.paper.common import PRESET_NAMES, load_records, table
from agents.tnen.paper.verdicts import __doc__ as VERDICT_RULES
from agents.tnen.presets import resolve
from clbench.nets import count_parameters
from clbench.recipe import DEFAULT

INTRO = """\
# The paper's experiments, reproduced

The method behind clbench's reference agent (task networks stored as latent vectors of one
contractive autoencoder, TN+EN; Mandivarapu, Camp & Estrada, *Self-Net: Lifelong Learning
via Continual Self-Modeling*, Frontiers in AI, 2020) was evaluated by its authors in five
experiments. Each is reproduced here with `agents/tnen/` under both of its presets:

{presets}

Beside accuracy, every experiment reports what the paper did not measure: the bytes kept
(EN weights + latents, as serialised) and the FLOPs of training.

Everything below is generated from the JSON records in this folder (one per experiment and
seed) by `clbench paper report`; `clbench paper NAME --seeds 0,1,2` reruns one experiment
(`--full` for the paper's sizes on the full datasets). The committed records are `reduced`
runs: offline, on `mnist5k` (4,000 training and 1,000 test digits, against MNIST's 60,000
and 10,000), sized to take minutes on a 2-core CPU; each section lists its sizes and what
was scaled down, and each record its wall seconds and threads. Timings are wall seconds on
a shared CPU and vary from machine to machine; accuracies, iterations, bytes and FLOPs do
not. Accuracies are always on the env's test sets, never on the agent's held-out data.

## How the verdicts are reached
{rules}
"""


def describe_preset(preset: str) -> str:
    """One Markdown bullet with a preset's TN and EN settings, read from ``agents.tnen``."""
    config, recipe = resolve(preset, {})
    sizes = [config["chunk_size"], *config["hidden_sizes"], config["latent_size"]]
    widths = sizes + sizes[-2::-1]
    with torch.device("meta"):  # counted, not allocated
        parameters = count_parameters(ContractiveAutoencoder.from_config(config))
    start = "its own random initialisation" if not config["shared_init"] else (
        "one shared seeded initialisation (the EN stores the change, scaled to unit RMS)")
    optimizer = (f"SGD (lr {recipe.lr}, momentum {recipe.momentum}" if recipe.optimizer == "sgd"
                 else f"Adam (lr {recipe.lr}") + f", batch {recipe.batch_size})"
    stop = (f"for {recipe.epochs} epochs on all training data" if recipe.holdout_fraction == 0
            else f"for at most {recipe.epochs} epochs, keeping the best epoch on a held-out "
            f"{recipe.holdout_fraction:.0%} of the training data (accuracy, then loss) and "
            f"stopping after {recipe.patience} epochs without improvement")
    shared = " (the shared recipe every baseline trains with)" if recipe == DEFAULT else ""
    iteration = ("one Adam step per stored skill" if config["adam_step_per_skill"] else
                 f"one Adam step on the new chunks and {config['replay_chunks']} recalled ones")
    rule = [f"every skill has cosine >= {config['min_cosine']}"]
    new = []
    if config["max_relative_error"] is not None:
        new.append(f"relative error <= {config['max_relative_error']}")
    if config["accuracy_tolerance"] is not None:
        new.append(f"held-out accuracy within {config['accuracy_tolerance']} of its TN's")
    if new:
        rule.append(f"the new one {' and '.join(new)}")
    if config["max_recall_drift"] is not None:
        rule.append(f"stored ones drift <= {config['max_recall_drift']}")
    return (f"- `{preset}`: TNs trained from {start} by {optimizer} {stop}{shared}; EN "
            f"{' -> '.join(f'{w:,}' for w in widths)} "
            f"({config['activation']}, {parameters / 1e6:.3g}M parameters stored as "
            f"{config['en_dtype']}, {config['penalty'].replace('_', '-')} contractive term, "
            f"lambda {config['contractive_weight']:g}, Adam lr {config['en_lr']:g}), "
            f"{config['latent_bits']}-bit latents; one EN iteration is {iteration}; EN "
            f"training stops when {', '.join(rule)} (at most {config['en_max_steps']:,} "
            f"iterations{_stall(config)}).")


def _stall(config: dict[str, Any]) -> str:
    patience = config["en_patience"]
    if patience is None:
        return ""
    return (f", or once {patience} checks in a row, every {config['en_check_every']} "
            "iterations, bring no progress")


def _record_line(records: list[dict[str, Any]]) -> str:
    record = records[0]
    commits = sorted({(r.get("git_commit") or "unknown")[:10] for r in records})
    seconds = ", ".join(f"{r['wall_seconds']:.0f}" for r in records)
    threads = record["torch_threads"]
    return (f"*Size `{record['size']}`, seeds {', '.join(str(r['seed']) for r in records)}, "
            f"device {record['device']} ({threads} thread{'s' * (threads != 1)}), {seconds} s "
            f"wall per seed, clbench {record['versions']['clbench']} at commit "
            f"{', '.join(commits)}; regenerate with `clbench paper report`.*")


NOT_MEASURED = "(not measured by the paper)"


def overview(claims_by_title: dict[str, list[list[str]]]) -> str:
    """One row per experiment: which of the paper's claims hold here and which do not."""
    rows = []
    for title, claims in claims_by_title.items():
        tested = [row for row in claims if not row[0].startswith(NOT_MEASURED)]
        holds = [row[0] for row in tested if row[-1] == "agrees"]
        not_quite = [f"{row[0]} ({row[-1]})" for row in tested if row[-1] != "agrees"]
        rows.append([title, f"{len(holds)} of {len(tested)}", "<br>".join(not_quite) or "-"])
    return table(["experiment", "claims that hold here", "claims that do not, or only partly"],
                 rows, align="lrl")


def write_report(folder: Path) -> Path:
    """Rewrite every section and plot of the records in ``folder``, then its README."""
    folder = Path(folder)
    parts, claims_by_title = [], {}
    for name in EXPERIMENTS:
        module = experiment_module(name)
        records = load_records(folder, name)
        if not records:
            parts.append(f"## {module.TITLE}\n\nNot run yet: `clbench paper {name}`.\n")
            continue
        section = module.render(records, folder)
        (folder / f"{name}.md").write_text(f"{section}\n{_record_line(records)}\n")
        rows = claims_by_title[module.TITLE] = module.claims(records)
        parts.append("\n".join([
            f"## {module.TITLE}", "",
            table(["the paper says", "rule", "we measured", "verdict"], rows, align="llll"), "",
            f"**Setup and why it differs from the paper.** {module.NOTES} Settings of this "
            f"run: `{json.dumps(records[0]['settings'])}`.", "",
            f"Details, tables and plots: [{name}.md]({name}.md). {_record_line(records)}", ""]))
    rules = VERDICT_RULES.split("\n\n", 1)[1]
    intro = INTRO.format(presets="\n".join(describe_preset(p) for p in PRESET_NAMES),
                         rules=rules)
    summary = ["## Overview", "", overview(claims_by_title), ""] if claims_by_title else []
    readme = folder / "README.md"
    readme.write_text("\n".join([intro, *summary, *parts]))
    return readme
