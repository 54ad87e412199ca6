"""Experiment 5, mixed architectures: one EN storing networks of different sizes.

The paper stores 5 MNIST networks and 1 CIFAR-10 network in one EN. Here the reference
agent runs through the stream in the harness: m MNIST one-vs-rest tasks (0..m-1), then,
with CIFAR-10 present (``--full``), CIFAR-10's 0-vs-rest, each with its reference net
(21,432 and 61,326 parameters); otherwise (always at ``reduced`` size) MNIST's m-vs-rest
learned by the 61,388-parameter MLP of the splitting experiment, so the EN still holds two
architectures of different sizes. m is 5 as in the paper, except for the paper preset at
``reduced`` size (see ``NOTES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.tnen.paper import common
from agents.tnen.paper.continual import judge_snapshots
from agents.tnen.paper.split import STAND_IN
from agents.tnen.paper.verdicts import NOT_TESTED, Outcome, near_rule, verdict
from clbench.tasks import one_vs_rest

NAME = "mixed"
TITLE = "5. Mixed architectures: MNIST networks and 1 larger network in one EN"

NOTES = ("Without CIFAR-10 (always at `reduced` size) the larger network is the "
         "61,388-parameter MLP of the splitting experiment on MNIST-shaped data, so the EN "
         "still stores two architectures of different sizes. At `reduced` size the paper "
         "preset stores only 2 MNIST networks before the larger one, with an iteration cap: "
         "one iteration takes one Adam step per stored skill, and the harness runs every "
         "`learn` twice (timed, and again to count FLOPs). "
         ) + common.PAPER_SMALL_EN_NOTE + common.PAPER_ON_MNIST5K_NOTE


SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"seal": False, "cifar": False, "env": "clbench/OneVsRestMNIST5k-v0",
             "mnist_networks": {"paper": 2, "default": 2},
             "env_kwargs": {"max_train_per_task": 120, "max_test_per_task": 60},
             "overrides": common.TINY_OVERRIDES},
    "reduced": {"cifar": False, "env": "clbench/OneVsRestMNIST5k-v0",
                "mnist_networks": {"paper": 2, "default": 5}, "env_kwargs": {},
                "overrides": {"paper": {**common.PAPER_ON_MNIST5K, **common.PAPER_SMALL_EN,
                                        "en_max_steps": 100},
                              "default": {}}},
    "full": {"cifar": True, "env": "clbench/OneVsRestMNIST-v0",
             "mnist_networks": {"paper": 5, "default": 5}, "env_kwargs": {},
             "overrides": {"paper": {}, "default": {}}},
}


def _stream(settings: dict[str, Any], preset: str, data_root) -> tuple[str, dict, dict, str]:
    """(env id, env kwargs, extra agent kwargs, note): m MNIST networks, then CIFAR-10's
    0-vs-rest where it is present and asked for, else the MLP stand-in on m vs rest."""
    m = settings["mnist_networks"][preset]
    env_kwargs = {**settings["env_kwargs"], **({"data_root": data_root} if data_root else {})}
    if settings["cifar"] and common.dataset_present("cifar10", data_root):
        names = [spec.name for spec in one_vs_rest("mnist", m) + one_vs_rest("cifar10", 1)]
        return ("clbench/MixedMNISTCIFAR10-v0", {**env_kwargs, "tasks": names}, {},
                f"{m} MNIST one-vs-rest networks, then 1 CIFAR-10 network (0 vs rest)")
    note = ("CIFAR-10 is not present: " if settings["cifar"] else "") + (
        f"{m} MNIST-shaped one-vs-rest reference convnets, then a `{STAND_IN}` network "
        f"(61,388 parameters) on {m} vs rest")
    return (settings["env"], {**env_kwargs, "n_tasks": m + 1},
            {"architecture": {str(m): STAND_IN}}, note)


def run(settings: dict[str, Any], seed: int, device: str, data_root) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for preset in common.PRESET_NAMES:
        env_id, env_kwargs, agent_kwargs, note = _stream(settings, preset, data_root)
        overrides = {**settings["overrides"][preset], **agent_kwargs}
        figures[preset] = {"env": env_id, "env_kwargs": env_kwargs, "note": note,
                           "overrides": overrides,
                           "result": common.evaluate_preset(preset, overrides, env_id, env_kwargs,
                                                            seed, device,
                                                            settings.get("seal", True))}
    return figures


PAPER_MNIST_NETWORKS = 5


def claims(records: list[dict[str, Any]]) -> list[list[str]]:
    settings = records[0]["settings"]
    outcomes, measured = {}, []
    for p in common.PRESET_NAMES:
        n_skills = len(records[0]["figures"][p]["result"]["accuracy"])
        outcome, text = judge_snapshots(records, p, (n_skills,))
        m = settings["mnist_networks"][p]
        if m != PAPER_MNIST_NETWORKS and outcome.status == "agrees":
            outcome = Outcome(NOT_TESTED, f"stored {m} MNIST networks + 1, not "
                              f"{PAPER_MNIST_NETWORKS} + 1; near rule met for those")
        outcomes[p] = outcome
        measured.append(f"{p} ({records[0]['figures'][p]['note']}), after all {n_skills}: "
                        f"{text}")
    summaries = {p: common.stream_summary(records[0]["figures"][p]["result"])
                 for p in common.PRESET_NAMES}
    return [
        ["One EN stores 5 MNIST networks and 1 CIFAR network at once",
         near_rule() + ", after the last skill", "<br>".join(measured), verdict(outcomes)],
        ["(not measured by the paper) bytes kept and learn FLOPs", "-",
         "; ".join(f"{p} (seed {records[0]['seed']}): "
                   f"{common.size_bytes(s['bytes'][-1])} kept vs "
                   f"{common.size_bytes(s['fp32_bytes'][-1])} as fp32 networks (about "
                   f"{common.size_bytes(s['fp32_bytes'][-1] // 4)} as int8); "
                   f"{sum(s['learn_flops']) / 1e9:.3g} GFLOP to learn all"
                   for p, s in summaries.items()), "-"],
    ]


def render(records: list[dict[str, Any]], folder: Path) -> str:
    figures = records[0]["figures"]
    lines = [f"## {TITLE}", "", f"Seed {records[0]['seed']} (the claims in the README judge "
             "every seed's record).", ""]
    for preset in common.PRESET_NAMES:
        part = figures[preset]
        lines += [f"The `{preset}` run: {part['note']} (`{part['env']}` "
                  f"{part['env_kwargs']}), through the harness.", ""]
        lines += common.stream_section(preset, part["result"], part["overrides"])
    panels = [(f"preset {p}", {p: len(figures[p]["result"]["accuracy"])})
              for p in common.PRESET_NAMES]
    accuracy = common.plot_stream_accuracy(figures, panels, folder, "mixed_accuracy.png",
                                    "skill (the last one: the larger network)")
    costs = common.plot_stream_costs(figures, folder, "mixed_costs.png")
    lines += [f"![final accuracies]({accuracy})", "", f"![costs and bytes]({costs})", ""]
    return "\n".join(lines)
