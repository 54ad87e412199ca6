"""Experiment 3, continual encoding: one-vs-rest skills added one at a time.

The paper adds the one-vs-rest digit classifiers 0, 1, ..., 9 in order; after 2, 4, 6 and
10 skills every reconstruction stays near its original, and the number of EN iterations
(and of backprop calls) needed to reach the threshold does not grow with the number of
skills.

Here the reference agent runs through ``clbench/OneVsRestMNIST5k-v0`` (``OneVsRestMNIST-v0``
at full size) in the harness, so the accuracy matrix is measured on the test sets by the
environment, the bytes kept are the serialised state after every task, and learn FLOPs are
counted. At ``reduced`` size the paper preset runs on a smaller CAE and stores 4 skills
(``NOTES`` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.tnen.paper.common import (
    PAPER_ON_MNIST5K,
    PAPER_ON_MNIST5K_NOTE,
    PAPER_SMALL_EN,
    PAPER_SMALL_EN_NOTE,
    PRESET_NAMES,
    TINY_OVERRIDES,
    evaluate_preset,
    plot_stream_accuracy,
    plot_stream_costs,
    size_bytes,
    stream_section,
    stream_summary,
)
from agents.tnen.paper.verdicts import (
    AGREES,
    DIFFERS,
    NOT_TESTED,
    Outcome,
    describe_gap,
    gap_facts,
    growth,
    growth_rule,
    judge_growth,
    judge_near,
    near_rule,
    verdict,
)

NAME = "continual"
TITLE = "3. Continual encoding: one-vs-rest skills added in order 0..9"

TINY_STREAM = {"n_tasks": 2, "max_train_per_task": 120, "max_test_per_task": 60}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"seal": False, "env": "clbench/OneVsRestMNIST5k-v0",
             "env_kwargs": {"paper": TINY_STREAM, "default": TINY_STREAM},
             "overrides": TINY_OVERRIDES},
    "reduced": {"env": "clbench/OneVsRestMNIST5k-v0",
                "env_kwargs": {"paper": {"n_tasks": 4}, "default": {}},
                "overrides": {"paper": {**PAPER_ON_MNIST5K, **PAPER_SMALL_EN, "en_max_steps": 150},
                              "default": {}}},
    "full": {"env": "clbench/OneVsRestMNIST-v0", "env_kwargs": {"paper": {}, "default": {}},
             "overrides": {"paper": {}, "default": {}}},
}
SHOWN = (2, 4, 6, 10)  # the paper's snapshots
NOTES = ("At `reduced` size the paper preset gets an iteration cap (`en_max_steps`) and "
         "only the first 4 skills: one iteration takes one Adam step per stored skill, and "
         "the harness runs every `learn` twice (timed, and again to count FLOPs). The "
         "originals' accuracies are those of the fp32 TNs that `learn` encoded, trained "
         "again exactly as the agent trained them "
         "(`TNEN.task_network`, same seed and data) and scored on the env's test sets, like "
         "the accuracy matrix. ") + PAPER_SMALL_EN_NOTE + PAPER_ON_MNIST5K_NOTE


def run(settings: dict[str, Any], seed: int, device: str, data_root) -> dict[str, Any]:
    root = {"data_root": data_root} if data_root else {}
    return {preset: {"overrides": settings["overrides"][preset],
                     "result": evaluate_preset(preset, settings["overrides"][preset],
                                               settings["env"],
                                               {**settings["env_kwargs"][preset], **root},
                                               seed, device, settings.get("seal", True))}
            for preset in PRESET_NAMES}


# ---------------------------------------------------------------------------- analysis
def snapshot_facts(records: list[dict[str, Any]], preset: str, k: int):
    """Test accuracy lost by every stored skill after ``k`` skills, against its original;
    None where a seed's run stored fewer than ``k``."""
    results = {r["seed"]: r["figures"][preset]["result"] for r in records}
    if min(len(result["accuracy"]) for result in results.values()) < k:
        return None
    return gap_facts({seed: (result["tn_test_accuracy"][:k], result["accuracy"][k - 1][:k],
                             result["n_test"][:k]) for seed, result in results.items()})


def judge_snapshots(records: list[dict[str, Any]], preset: str,
                    snapshots: tuple[int, ...]) -> tuple[Outcome, str]:
    """The near rule after each of ``snapshots`` skills, judged where the run stored them."""
    tested = {k: snapshot_facts(records, preset, k) for k in snapshots}
    missing = [k for k, facts in tested.items() if facts is None]
    tested = {k: facts for k, facts in tested.items() if facts is not None}
    outcomes = {k: judge_near(facts) for k, facts in tested.items()}
    measured = "; ".join(f"after {k}: {describe_gap(facts)}" for k, facts in tested.items())
    failed = [f"after {k}: {o.why}" for k, o in outcomes.items() if o.status != AGREES]
    if failed:
        return Outcome(DIFFERS, "; ".join(failed)), measured
    if missing:
        stored = max(len(r["figures"][preset]["result"]["accuracy"]) for r in records)
        return Outcome(f"agrees after {', '.join(map(str, tested)) or 'none'}; {NOT_TESTED} "
                       f"after {', '.join(map(str, missing))}",
                       f"the run stored {stored} skills"), measured
    return Outcome(AGREES), measured


def claims(records: list[dict[str, Any]]) -> list[list[str]]:
    judged = {p: judge_snapshots(records, p, SHOWN) for p in PRESET_NAMES}
    summaries = {p: [stream_summary(r["figures"][p]["result"]) for r in records]
                 for p in PRESET_NAMES}
    rows = [["After 2, 4, 6 and 10 skills every reconstruction stays near its original",
             near_rule() + ", after each number of skills the run stored",
             "<br>".join(f"{p}: {measured}" for p, (_, measured) in judged.items()),
             verdict({p: outcome for p, (outcome, _) in judged.items()})]]
    for key, what in (("en_iterations", "EN iterations"),
                      ("backprop_calls", "backprop calls (TN + EN Adam steps)")):
        rows.append([f"The {what} needed to add a skill do not grow with the number of skills",
                     growth_rule(),
                     "<br>".join(f"{p}: " + "; ".join(
                         f"seed {r['seed']}: {s[key]} (ratio {growth(s[key]) or 0:.2f})"
                         for r, s in zip(records, summaries[p], strict=True))
                         for p in PRESET_NAMES),
                     verdict({p: judge_growth([s[key] for s in summaries[p]])
                              for p in PRESET_NAMES})])
    rows.append(["(not measured by the paper) learn FLOPs per skill and bytes kept", "-",
                 "; ".join(f"{p} (seed {records[0]['seed']}): learn FLOPs ratio "
                           f"{growth(s[0]['learn_flops']) or 0:.2f}, "
                           f"{size_bytes(s[0]['bytes'][-1])} kept for {len(s[0]['skills'])} "
                           f"skills vs {size_bytes(s[0]['fp32_bytes'][-1])} as fp32 networks "
                           f"and about {size_bytes(s[0]['fp32_bytes'][-1] // 4)} as int8"
                           for p, s in summaries.items()), "-"])
    return rows


# ---------------------------------------------------------------------------- report
def render(records: list[dict[str, Any]], folder: Path) -> str:
    record = records[0]
    figures, settings = record["figures"], record["settings"]
    n_tasks = max(len(figures[p]["result"]["accuracy"]) for p in PRESET_NAMES)
    shown = [k for k in SHOWN if k <= n_tasks] or [n_tasks]
    lines = [f"## {TITLE}", "",
             f"Stream `{settings['env']}` through the harness, seed {record['seed']} (the "
             "claims in the README judge every seed's record); accuracies are measured by the "
             "environment on the test sets, after every addition, on networks decoded from "
             "the stored state.", ""]
    for preset in PRESET_NAMES:
        lines += stream_section(preset, figures[preset]["result"], figures[preset]["overrides"])
    panels = [(f"after {k} skills", {p: k for p in PRESET_NAMES
                                     if len(figures[p]["result"]["accuracy"]) >= k})
              for k in shown]
    accuracy = plot_stream_accuracy(figures, panels, folder, "continual_accuracy.png",
                                    "skill (digit vs rest)")
    costs = plot_stream_costs(figures, folder, "continual_costs.png")
    lines += [f"![accuracies after 2, 4, 6, 10 skills]({accuracy})", "",
              f"![iterations, backprop calls, FLOPs and bytes per skill]({costs})", ""]
    return "\n".join(lines)
