"""Experiment 2, batch encoding: many trained networks encoded by one EN at once.

The paper trains TNs on random (positive digits, negative digits) tuple tasks, encodes 2, 5,
10 and 333 of them at once and plots the accuracy of every reconstructed network against
EN training time, beside the originals; for 333 the mean nearly matches the originals.

Here: the first k tuple tasks of one seeded stream, one TN each (trained as the preset's
``TNEN.learn`` trains it), encoded together by :func:`clbench.paper.encoding.encode_at_once`
until the preset's stopping rule holds. At ``reduced`` size the paper preset's EN input
(n, its chunk size) is cut to a quarter and it encodes at most 10 networks: its full-size
CAE (85.8M parameters) takes about a second per iteration on one CPU core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clbench.paper.common import (
    PAPER_ON_MNIST5K,
    PAPER_ON_MNIST5K_NOTE,
    PRESET_COLORS,
    PRESET_NAMES,
    TINY_OVERRIDES,
    figure,
    gflop,
    log,
    num,
    pct,
    preset_config,
    save_figure,
    size_bytes,
    summary,
    table,
    verdict,
)
from clbench.paper.encoding import encode_at_once, train_skill
from clbench.tasks import tuples

NAME = "batch"
TITLE = "2. Batch encoding: 2, 5, 10 and 333 networks encoded at once"

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"dataset": "mnist5k", "counts": {"paper": [2], "default": [2]},
             "max_train": 120, "max_test": 60,
             "overrides": TINY_OVERRIDES},
    "reduced": {"dataset": "mnist5k", "counts": {"paper": [2, 5], "default": [2, 5, 10, 333]},
                "max_train": 300, "max_test": 300,
                "overrides": {"paper": {**PAPER_ON_MNIST5K, "chunk_size": 5358,
                                        "en_max_steps": 150},
                              "default": {"en_max_steps": 3000, "en_check_every": 250}}},
    "full": {"dataset": "mnist", "counts": {"paper": [2, 5, 10, 333],
                                            "default": [2, 5, 10, 333]},
             "max_train": None, "max_test": None, "overrides": {"paper": {}, "default": {}}},
}
NEAR = 0.02
NOTES = ("At `reduced` size the paper preset gets a smaller EN input n (its `chunk_size` "
         "override: each network becomes several chunks and the CAE shrinks in proportion) "
         "and fewer networks: an iteration of its CAE costs FLOPs in proportion to every "
         "number encoded times its latent and hidden sizes (the exact contractive penalty), "
         "seconds per iteration on one CPU core for a handful of networks. Iteration caps "
         "(`en_max_steps`) keep each run to minutes; training data per task is capped so "
         "that 333 TNs train in a few minutes; checks (`en_check_every`) are rarer than in "
         "the agent, since each rebuilds and tests every network. One iteration is one Adam "
         "step on as many chunks as the agent's steps take (all of them for the paper "
         "preset, not one step per network in turn as in the authors' code). "
         ) + PAPER_ON_MNIST5K_NOTE


def run(settings: dict[str, Any], seed: int, device: str, data_root) -> dict[str, Any]:
    largest = max(max(counts) for counts in settings["counts"].values())
    specs = tuples(settings["dataset"], largest, seed=seed)
    figures = {}
    for preset in PRESET_NAMES:
        config = preset_config(preset, settings["overrides"][preset])
        counts = settings["counts"][preset]
        skills = [train_skill(spec, task_id, "reference", config, seed, settings, device,
                              data_root) for task_id, spec in enumerate(specs[:max(counts)])]
        log(f"batch, preset {preset}: {len(skills)} TNs trained in "
            f"{sum(s.seconds for s in skills):.0f} s")
        figures[preset] = {
            "overrides": settings["overrides"][preset], "chunk_size": config["chunk_size"],
            "runs": {str(k): encode_at_once(skills[:k], config, seed) for k in counts},
        }
    return figures


# ---------------------------------------------------------------------------- analysis
def final_gap(run_figures: dict[str, Any]) -> dict[str, float]:
    """Mean original and reconstructed accuracy at the last check, and their gap."""
    final = run_figures["history"][-1]["accuracy"]
    original = summary(run_figures["original_accuracy"])["mean"]
    reconstructed = summary(final)["mean"]
    return {"original": original, "reconstructed": reconstructed,
            "gap": original - reconstructed}


def claims(record: dict[str, Any]) -> list[list[str]]:
    figures = record["figures"]
    largest = {p: figures[p]["runs"][max(figures[p]["runs"], key=int)] for p in PRESET_NAMES}
    gaps = {p: final_gap(run) for p, run in largest.items()}
    return [
        ["Encoding 333 networks at once, the mean accuracy of the reconstructions nearly "
         "matches the originals",
         "; ".join(f"{p} ({largest[p]['n_skills']} networks, the most at this size): "
                   f"{pct(g['reconstructed'])} vs {pct(g['original'])} originals after "
                   f"{_iterations(largest[p])}" for p, g in gaps.items()),
         verdict({p: (g["gap"] <= NEAR, f"a gap of {pct(g['gap'])}" + (
             "" if largest[p]["rule_met_at"] is not None
             else ", not converged within the iteration cap")) for p, g in gaps.items()})],
        ["Reconstructed accuracy rises to the originals as the EN trains "
         "(2, 5, 10, 333 networks)",
         "; ".join(f"{p}: " + ", ".join(
             f"{k} networks {pct(final_gap(run)['reconstructed'])} vs "
             f"{pct(final_gap(run)['original'])} in {_iterations(run)}"
             for k, run in figures[p]["runs"].items()) for p in PRESET_NAMES),
         verdict({p: (all(final_gap(run)["gap"] <= NEAR for run in figures[p]["runs"].values()),
                      f"some runs ended more than {pct(NEAR, 0)} below their originals")
                  for p in PRESET_NAMES})],
        ["(not measured by the paper) bytes kept and encoding FLOPs",
         "; ".join(f"{p} ({run['n_skills']} networks): {size_bytes(run['storage_bytes'])} vs "
                   f"{size_bytes(run['fp32_networks_bytes'])} as fp32 networks, "
                   f"{gflop(run['history'][-1]['flops'])} GFLOP" for p, run in largest.items()),
         "; ".join(f"{p}: " + ("more bytes than the networks it stores"
                               if run["storage_bytes"] > run["fp32_networks_bytes"]
                               else "fewer bytes than the networks it stores")
                   for p, run in largest.items())],
    ]


def _iterations(run_figures: dict[str, Any]) -> str:
    met = run_figures["rule_met_at"]
    return f"{met} iterations" if met is not None else (
        f">{run_figures['max_steps']} iterations (cap)")


# ---------------------------------------------------------------------------- report
def _plot(figures: dict[str, Any], preset: str, folder: Path) -> str:
    runs = figures[preset]["runs"]
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
            ax.fill_between(iterations, [m - s["std"] for m, s in zip(mean, stats, strict=True)],
                            [m + s["std"] for m, s in zip(mean, stats, strict=True)],
                            color=PRESET_COLORS[preset], alpha=0.25, label="mean ± std")
            ax.plot(iterations, mean, color=PRESET_COLORS[preset], marker=".")
            original = summary(run["original_accuracy"])
            ax.axhline(original["mean"], color="gray", linestyle="--", label="originals (mean)")
            ax.legend(fontsize=8)
        ax.set_title(f"{k} networks", fontsize=10)
        ax.set_xlabel("EN iterations")
        ax.set_ylim(0.4, 1.01)
    axes[0].set_ylabel(f"test accuracy (preset {preset})\n dashed: original networks")
    return save_figure(fig, folder, f"batch_{preset}.png")


def render(record: dict[str, Any], folder: Path) -> str:
    figures, settings = record["figures"], record["settings"]
    lines = [f"## {TITLE}", "",
             f"Data: `{settings['dataset']}` tuple tasks (40% positives), at most "
             f"{settings['max_train'] or 'all'} training and {settings['max_test'] or 'all'} "
             "test examples per task. One EN iteration is one Adam step on every chunk (paper "
             "preset) or on a random batch of them (default preset, as the agent's steps); "
             "accuracies are those of the networks rebuilt from the *stored* EN and latents, "
             "on each task's test set.", ""]
    for preset in PRESET_NAMES:
        part = figures[preset]
        overrides = part["overrides"]
        lines += [f"Preset `{preset}`" + (f" with {overrides}" if overrides else "") +
                  f" (EN input n = {part['chunk_size']:,}):", ""]
        rows = []
        for k, run in part["runs"].items():
            final = summary(run["history"][-1]["accuracy"])
            original = summary(run["original_accuracy"])
            last = run["history"][-1]
            rows.append([k, _iterations(run), f"{last['seconds']:.1f}",
                         gflop(last["flops"]), f"{run['en_parameters']:,}",
                         f"{pct(original['mean'])} ± {pct(original['std'])}",
                         f"{pct(final['mean'])} ± {pct(final['std'])}", pct(final["min"]),
                         num(min(last["cosine"]), 4), size_bytes(run["storage_bytes"]),
                         size_bytes(run["fp32_networks_bytes"]),
                         gflop(run["tn"]["flops"])])
        lines += [table(["networks", "EN iterations to the rule", "EN s", "EN GFLOP",
                         "EN parameters", "originals", "reconstructed", "worst",
                         "min cosine", "bytes kept", "fp32 networks", "TN GFLOP"], rows), "",
                  f"![batch encoding, preset {preset}]({_plot(figures, preset, folder)})", ""]
    return "\n".join(lines)
