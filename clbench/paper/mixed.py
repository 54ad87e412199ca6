"""Experiment 5, mixed architectures: one EN storing networks of different sizes.

The paper stores 5 MNIST networks and 1 CIFAR-10 network in one EN. Here the reference
agent runs through the stream in the harness: with CIFAR-10 present (``--full``), the five
MNIST one-vs-rest tasks 0..4 and then CIFAR-10's 0-vs-rest, each with its reference net
(21,432 and 61,326 parameters); otherwise (always at ``reduced`` size) the sixth task is
MNIST's 5-vs-rest learned by the 61,388-parameter MLP of the splitting experiment, so the
EN still holds two architectures of different sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clbench.paper.common import (
    PAPER_ON_MNIST5K,
    PAPER_ON_MNIST5K_NOTE,
    PRESET_NAMES,
    TINY_OVERRIDES,
    dataset_present,
    evaluate_preset,
    pct,
    plot_stream_accuracy,
    plot_stream_costs,
    size_bytes,
    stream_section,
    stream_summary,
)
from clbench.paper.continual import NEAR, retention
from clbench.paper.split import STAND_IN

NAME = "mixed"
TITLE = "5. Mixed architectures: 5 MNIST networks and 1 larger network in one EN"

NOTES = ("Without CIFAR-10 (always at `reduced` size) the larger network is the "
         "61,388-parameter MLP of the splitting experiment on MNIST-shaped data, so the EN "
         "still stores two architectures of different sizes. At `reduced` size the paper "
         "preset's EN input n is smaller, as in the continual experiment, for the same "
         "reason. ") + PAPER_ON_MNIST5K_NOTE
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"verify": False, "cifar": False, "env": "clbench/OneVsRestMNIST5k-v0",
             "env_kwargs": {"max_train_per_task": 120, "max_test_per_task": 60},
             "overrides": TINY_OVERRIDES},
    "reduced": {"cifar": False, "env": "clbench/OneVsRestMNIST5k-v0", "env_kwargs": {},
                "overrides": {"paper": {**PAPER_ON_MNIST5K, "chunk_size": 5358,
                                        "en_max_steps": 150},
                              "default": {}}},
    "full": {"cifar": True, "env": "clbench/OneVsRestMNIST-v0", "env_kwargs": {},
             "overrides": {"paper": {}, "default": {}}},
}


def _stream(settings: dict[str, Any], data_root) -> tuple[str, dict, dict, str]:
    """(env id, env kwargs, extra agent kwargs, note) for CIFAR-10 or the stand-in."""
    root = {"data_root": data_root} if data_root else {}
    if settings["cifar"] and dataset_present("cifar10", data_root):
        return ("clbench/MixedMNISTCIFAR10-v0", {**settings["env_kwargs"], **root}, {},
                "5 MNIST one-vs-rest networks, then 1 CIFAR-10 network (0 vs rest)")
    note = ("CIFAR-10 is not present: " if settings["cifar"] else "") + (
        f"5 MNIST-shaped one-vs-rest reference convnets, then a `{STAND_IN}` network "
        "(61,388 parameters) on 5 vs rest")
    return (settings["env"], {**settings["env_kwargs"], **root, "n_tasks": 6},
            {"architecture": {"5": STAND_IN}}, note)


def run(settings: dict[str, Any], seed: int, device: str, data_root) -> dict[str, Any]:
    env_id, env_kwargs, agent_kwargs, note = _stream(settings, data_root)
    figures: dict[str, Any] = {"env": env_id, "env_kwargs": env_kwargs, "note": note}
    for preset in PRESET_NAMES:
        overrides = {**settings["overrides"][preset], **agent_kwargs}
        figures[preset] = {"overrides": overrides,
                           "result": evaluate_preset(preset, overrides, env_id, env_kwargs,
                                                     seed, device, settings.get("verify", True))}
    return figures


def claims(record: dict[str, Any]) -> list[list[str]]:
    figures = record["figures"]
    facts = {p: retention(figures[p]["result"]) for p in PRESET_NAMES}
    near = all(f["worst_storing_loss"] <= NEAR and f["worst_drift"] >= -NEAR
               for f in facts.values())
    sizes = {p: [m["tn_parameters"] for m in figures[p]["result"]["agent_metrics"]]
             for p in PRESET_NAMES}
    summaries = {p: stream_summary(figures[p]["result"]) for p in PRESET_NAMES}
    return [
        [f"One EN stores 5 MNIST networks and 1 CIFAR network at once ({figures['note']})",
         "; ".join(f"{p}: final test accuracies {' '.join(pct(a, 0) for a in row)}; worst "
                   f"loss when stored {pct(f['worst_storing_loss'])}, worst later drift "
                   f"{pct(f['worst_drift'])}"
                   for p, f in facts.items()
                   for row in [figures[p]["result"]["accuracy"][-1]]),
         ("agrees" if near else f"differs: some skill lost more than {pct(NEAR, 0)}") +
         f" (network sizes {sorted(set(sizes[PRESET_NAMES[0]]))})"],
        ["(not measured by the paper) bytes kept and learn FLOPs",
         "; ".join(f"{p}: {size_bytes(s['bytes'][-1])} kept vs {size_bytes(s['fp32_bytes'][-1])}"
                   f" as fp32 networks; {sum(s['learn_flops']) / 1e9:.3g} GFLOP to learn all"
                   for p, s in summaries.items()), "-"],
    ]


def render(record: dict[str, Any], folder: Path) -> str:
    figures = record["figures"]
    n_tasks = len(figures[PRESET_NAMES[0]]["result"]["accuracy"])
    lines = [f"## {TITLE}", "", f"Stream: {figures['note']} (`{figures['env']}` "
             f"{figures['env_kwargs']}), through the harness.", ""]
    for preset in PRESET_NAMES:
        lines += stream_section(preset, figures[preset]["result"], figures[preset]["overrides"])
    accuracy = plot_stream_accuracy(figures, [n_tasks], folder, "mixed_accuracy.png",
                                    "skill (the last one: the larger network)")
    costs = plot_stream_costs(figures, folder, "mixed_costs.png")
    lines += [f"![final accuracies]({accuracy})", "", f"![costs and bytes]({costs})", ""]
    return "\n".join(lines)
