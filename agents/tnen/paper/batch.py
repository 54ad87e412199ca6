"""Experiment 2, batch encoding: many trained networks encoded by one EN at once.

The paper trains TNs on random (positive digits, negative digits) tuple tasks, encodes 2, 5,
10 and 333 of them at once and plots the accuracy of every reconstructed network against
EN training time, beside the originals; for 333 the mean nearly matches the originals.

Here: the first k tuple tasks of one seeded stream, one TN each, stored together by the
agent's own code (:func:`agents.tnen.paper.at_once.encode_at_once`: ``TNEN.prepare`` per
task, one ``TNEN.store``) until the preset's stopping rule holds or its iteration cap.
At ``reduced`` size the paper preset runs on a smaller CAE and encodes at most 5 networks
(``NOTES`` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.tnen import TNEN
from agents.tnen.paper.at_once import encode_at_once
from agents.tnen.paper.common import (
    PAPER_ON_MNIST5K,
    PAPER_ON_MNIST5K_NOTE,
    PAPER_SMALL_EN,
    PAPER_SMALL_EN_NOTE,
    PRESET_COLORS,
    PRESET_NAMES,
    TINY_OVERRIDES,
    figure,
    gflop,
    log,
    num,
    save_figure,
    size_bytes,
    summary,
    table,
)
from agents.tnen.paper.verdicts import (
    NOT_TESTED,
    Outcome,
    describe_gap,
    gap_facts,
    judge_near,
    near_rule,
    pct,
    spread,
    verdict,
)
from clbench.tasks import materialize, tuples

NAME = "batch"
TITLE = "2. Batch encoding: 2, 5, 10 and 333 networks encoded at once"

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"dataset": "mnist5k", "counts": {"paper": [2], "default": [2]},
             "max_train": 120, "max_test": 60,
             "overrides": TINY_OVERRIDES},
    "reduced": {"dataset": "mnist5k", "counts": {"paper": [2, 5], "default": [2, 5, 10, 333]},
                "max_train": 300, "max_test": 300,
                "overrides": {"paper": {**PAPER_ON_MNIST5K, **PAPER_SMALL_EN, "en_max_steps": 150},
                              "default": {"en_max_steps": 3000, "en_check_every": 250}}},
    "full": {"dataset": "mnist", "counts": {"paper": [2, 5, 10, 333],
                                            "default": [2, 5, 10, 333]},
             "max_train": None, "max_test": None, "overrides": {"paper": {}, "default": {}}},
}
PAPER_COUNTS = (2, 5, 10, 333)
NOTES = ("At `reduced` size the paper preset encodes at most 5 networks, with an iteration "
         "cap (`en_max_steps`). The default preset gets a larger cap and rarer checks "
         "(each rebuilds and tests every network). Training data per task is capped so that "
         "333 TNs train in minutes. ") + PAPER_SMALL_EN_NOTE + PAPER_ON_MNIST5K_NOTE


def run(settings: dict[str, Any], seed: int, device: str, data_root) -> dict[str, Any]:
    largest = max(max(counts) for counts in settings["counts"].values())
    specs = tuples(settings["dataset"], largest, seed=seed)
    tasks = [materialize(spec, task_id, seed, positive_fraction=0.4,
                         max_train=settings["max_train"], max_test=settings["max_test"],
                         root=data_root, device=device) for task_id, spec in enumerate(specs)]
    figures = {}
    for preset in PRESET_NAMES:
        overrides = settings["overrides"][preset]
        runs = {}
        for k in settings["counts"][preset]:
            log(f"batch, preset {preset}, seed {seed}: {k} networks")
            agent = TNEN(device, preset=preset, seed=seed, **overrides)
            runs[str(k)] = encode_at_once(agent, tasks[:k])
        figures[preset] = {"overrides": overrides,
                           "chunk_size": TNEN(preset=preset, **overrides).config["chunk_size"],
                           "runs": runs}
    return figures


# ---------------------------------------------------------------------------- analysis
def runs_of(records: list[dict[str, Any]], preset: str, k: str) -> dict[int, dict[str, Any]]:
    """Seed -> the run of ``k`` networks of ``preset`` (where that seed ran it)."""
    return {r["seed"]: r["figures"][preset]["runs"][k] for r in records
            if k in r["figures"][preset]["runs"]}


def facts_of(runs: dict[int, dict[str, Any]]):
    """Accuracy gaps at the final check (what is stored), over seeds."""
    return gap_facts({seed: (run["original_accuracy"], run["history"][-1]["accuracy"],
                             run["n_test"]) for seed, run in runs.items()})


def _met(runs: dict[int, dict[str, Any]]) -> str:
    met = sum(run["rule_met"] for run in runs.values())
    iterations = spread([run["iterations"] for run in runs.values()], digits=0)
    return f"stopping rule met in {met} of {len(runs)} seeds, {iterations} iterations"


def claims(records: list[dict[str, Any]]) -> list[list[str]]:
    counts = {p: sorted({int(k) for r in records for k in r["figures"][p]["runs"]})
              for p in PRESET_NAMES}
    rule = near_rule()
    largest, most = {}, {}
    for p in PRESET_NAMES:
        runs = runs_of(records, p, str(max(counts[p])))
        if max(counts[p]) < 333:
            largest[p] = Outcome(NOT_TESTED, f"stored at most {max(counts[p])} networks")
            most[p] = f"{p}: not run with 333 networks (at most {max(counts[p])})"
        else:
            facts = facts_of(runs)
            largest[p] = judge_near(facts)
            most[p] = f"{p} (333 networks): {describe_gap(facts)}; {_met(runs)}"
    rising, measured = {}, []
    for p in PRESET_NAMES:
        outcomes = {k: judge_near(facts_of(runs_of(records, p, str(k)))) for k in counts[p]}
        measured += [f"{p}, {k} networks: {describe_gap(facts_of(runs_of(records, p, str(k))))}"
                     for k in counts[p]]
        failed = [f"{k}: {o.why}" for k, o in outcomes.items() if o.status != "agrees"]
        missing = [k for k in PAPER_COUNTS if k not in counts[p]]
        rising[p] = (Outcome("differs", "; ".join(failed)) if failed else
                     Outcome(NOT_TESTED, f"{missing} not run; agrees for {counts[p]}")
                     if missing else Outcome("agrees"))
    first = records[0]["figures"]
    return [
        ["Encoding 333 networks at once, the mean accuracy of the reconstructions nearly "
         "matches the originals", rule, "; ".join(most.values()), verdict(largest)],
        ["Reconstructed accuracy rises to the originals as the EN trains "
         "(2, 5, 10, 333 networks)", rule, "<br>".join(measured), verdict(rising)],
        ["(not measured by the paper) bytes kept and encoding FLOPs", "-",
         "; ".join(f"{p} ({k} networks, seed {records[0]['seed']}): "
                   f"{size_bytes(run['storage_bytes'])} vs "
                   f"{size_bytes(run['fp32_networks_bytes'])} as fp32 networks, "
                   f"{gflop(run['history'][-1]['flops'])} EN GFLOP" for p in PRESET_NAMES
                   for k, run in [max(first[p]["runs"].items(), key=lambda kv: int(kv[0]))]),
         "-"],
    ]


# ---------------------------------------------------------------------------- report
def _plot(record: dict[str, Any], preset: str, folder: Path) -> str:
    runs = record["figures"][preset]["runs"]
    fig, axes = figure(len(runs), width=4.2)
    for ax, (k, run) in zip(axes, runs.items(), strict=True):
        iterations = [check["iteration"] for check in run["history"]]
        if int(k) <= 10:
            for index in range(run["n_skills"]):
                line, = ax.plot(iterations, [check["accuracy"][index] for check in run["history"]],
                                marker=".")
                ax.axhline(run["original_accuracy"][index], color=line.get_color(),
                           linestyle="--", linewidth=0.8)
        else:
            stats = [summary(check["accuracy"]) for check in run["history"]]
            mean = [s["mean"] for s in stats]
            ax.fill_between(iterations, [s["min"] for s in stats], [s["max"] for s in stats],
                            color=PRESET_COLORS[preset], alpha=0.25, label="min-max")
            ax.plot(iterations, mean, color=PRESET_COLORS[preset], marker=".", label="mean")
            original = summary(run["original_accuracy"])
            ax.axhline(original["mean"], color="gray", linestyle="--", label="originals (mean)")
            ax.legend(fontsize=8)
        ax.set_title(f"{k} networks", fontsize=10)
        ax.set_xlabel("EN iterations")
        ax.set_ylim(0.4, 1.01)
    axes[0].set_ylabel(f"test accuracy (preset {preset}, seed {record['seed']})\n"
                       "dashed: original networks")
    return save_figure(fig, folder, f"batch_{preset}.png")


def render(records: list[dict[str, Any]], folder: Path) -> str:
    settings = records[0]["settings"]
    lines = [f"## {TITLE}", "",
             f"Data: `{settings['dataset']}` tuple tasks (40% positives), at most "
             f"{settings['max_train'] or 'all'} training and {settings['max_test'] or 'all'} "
             "test examples per task. Accuracies are those of the networks rebuilt from the "
             "*stored* EN and latents, on each task's test set; every figure is mean ± std "
             f"over seeds {', '.join(str(r['seed']) for r in records)}; worst: the worst "
             "network of any seed.", ""]
    for preset in PRESET_NAMES:
        part = records[0]["figures"][preset]
        overrides = part["overrides"]
        lines += [f"Preset `{preset}`" + (f" with {overrides}" if overrides else "") +
                  f" (EN input n = {part['chunk_size']:,}):", ""]
        rows = []
        for k in part["runs"]:
            runs = list(runs_of(records, preset, k).values())
            finals = [run["history"][-1] for run in runs]
            rows.append([k, f"{sum(r['rule_met'] for r in runs)} of {len(runs)}",
                         spread([r["iterations"] for r in runs], digits=0),
                         spread([r["adam_steps"] for r in runs], digits=0),
                         spread([f["flops"] / 1e9 for f in finals], digits=3),
                         spread([f["seconds"] for f in finals], digits=0),
                         spread([summary(r["original_accuracy"])["mean"] for r in runs], True),
                         spread([summary(f["accuracy"])["mean"] for f in finals], True),
                         pct(min(min(f["accuracy"]) for f in finals)),
                         num(min(min(f["cosine"]) for f in finals), 4),
                         size_bytes(runs[0]["storage_bytes"]),
                         size_bytes(runs[0]["fp32_networks_bytes"])])
        lines += [table(["networks", "rule met", "EN iterations", "Adam steps", "EN GFLOP",
                         "EN s (info)", "originals", "reconstructed", "worst", "min cosine",
                         "bytes kept", "fp32 networks"], rows), "",
                  f"![batch encoding, preset {preset}]({_plot(records[0], preset, folder)})",
                  ""]
    return "\n".join(lines)
