"""Verdicts on the paper's claims: each from a rule printed beside it, with its margin.

Every claim row of the report is ``[the paper says, rule, we measured, verdict]``. The rules
share these conventions, so a reader can check every verdict against the record:

- a claim about networks holds only if its rule holds for the mean over networks *and* for
  the worst network, in every seed (the measured column names the worst);
- accuracy differences smaller than one test example (1 / n_test of that task) are ties
  and count as no difference;
- speed is judged on EN iterations and FLOPs (hardware-independent); seconds are shown for
  information only;
- a claim about k skills is judged only on runs that stored k skills; where a preset did
  not, its verdict says "not tested" and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

AGREES, DIFFERS, NOT_TESTED = "agrees", "differs", "not tested"
NEAR = 0.02  # "near its original": at most 2 points of test accuracy lost
SPEED_MARGIN = 0.10  # "faster": at least 10% fewer iterations and FLOPs
GROWTH_LIMIT = 1.5  # "does not grow": last third at most 1.5x the first third


class Outcome(NamedTuple):
    """One preset's verdict on one claim, and why where it is not ``agrees``."""

    status: str
    why: str = ""


def outcome(holds: bool, why: str) -> Outcome:
    return Outcome(AGREES) if holds else Outcome(DIFFERS, why)


def verdict(outcomes: dict[str, Outcome]) -> str:
    """``agrees`` where every preset agrees, else each preset's verdict and reason."""
    if all(o.status == AGREES for o in outcomes.values()):
        return AGREES
    return "; ".join(f"{preset}: {o.status}" + (f" ({o.why})" if o.why else "")
                     for preset, o in outcomes.items())


def beyond_resolution(difference: float, n_test: int) -> float:
    """``difference`` of two accuracies, or 0.0 (a tie) where it is under one test example."""
    return 0.0 if abs(difference) < 1 / n_test else difference


def accuracy_gaps(original: Sequence[float], reconstructed: Sequence[float],
                  n_test: Sequence[int]) -> list[float]:
    """Per network: original minus reconstructed test accuracy, ties as 0."""
    return [beyond_resolution(o - r, n) for o, r, n in
            zip(original, reconstructed, n_test, strict=True)]


class GapFacts(NamedTuple):
    """Accuracy lost by reconstructions over seeds: the mean per seed, the worst network."""

    mean_by_seed: list[float]
    seeds: list[int]
    worst: float
    worst_where: str  # "seed s, network j"
    n_test: int       # the smallest test set among the networks judged


def gap_facts(per_seed: dict[int, tuple[Sequence[float], Sequence[float], Sequence[int]]]
              ) -> GapFacts:
    """``per_seed[s] = (originals, reconstructions, test set sizes)`` of the networks of a
    run; ties removed before anything is averaged."""
    means, worst, where, smallest = [], -np.inf, "", min(
        min(sizes) for _, _, sizes in per_seed.values())
    for seed, (original, reconstructed, sizes) in per_seed.items():
        gaps = accuracy_gaps(original, reconstructed, sizes)
        means.append(float(np.mean(gaps)))
        index = int(np.argmax(gaps))
        if gaps[index] > worst:
            worst, where = gaps[index], f"seed {seed}, network {index}"
    return GapFacts(means, list(per_seed), float(worst), where, smallest)


def near_rule(margin: float = NEAR) -> str:
    return (f"gap (original − reconstructed test accuracy) ≤ {100 * margin:g} points for the "
            "mean over networks and for the worst network, in every seed; gaps under one "
            "test example are ties (0)")


def judge_near(facts: GapFacts, margin: float = NEAR) -> Outcome:
    """The :func:`near_rule` on the facts of a run."""
    worst_mean = max(facts.mean_by_seed)
    if worst_mean > margin:
        seed = facts.seeds[facts.mean_by_seed.index(worst_mean)]
        return Outcome(DIFFERS, f"mean gap {pct(worst_mean)} in seed {seed}")
    if facts.worst > margin:
        return Outcome(DIFFERS, f"worst network lost {pct(facts.worst)} ({facts.worst_where})")
    return Outcome(AGREES)


def describe_gap(facts: GapFacts) -> str:
    return (f"mean gap {spread(facts.mean_by_seed, points=True)} over "
            f"{len(facts.mean_by_seed)} seed(s), worst network {pct(facts.worst)} "
            f"({facts.worst_where}); resolution {pct(1 / facts.n_test, 2)}")


def speed_rule(margin: float = SPEED_MARGIN) -> str:
    return (f"A faster than B: at least {100 * margin:g}% fewer EN iterations *and* FLOPs to "
            "the same level (the stopping rule where both met it, else the lower of their "
            "final minimum cosines, if at least 0.9), in every seed; seconds for information "
            "only")


def judge_faster(iterations: Iterable[tuple[float, float]], flops: Iterable[tuple[float, float]],
                 margin: float = SPEED_MARGIN) -> Outcome:
    """Per seed pairs (A, B) of iterations and of FLOPs: A faster in every seed on both."""
    iterations, flops = list(iterations), list(flops)
    if any(a is None or b is None for a, b in iterations + flops):
        return Outcome(NOT_TESTED, "no common level of at least cosine 0.9 reached")
    slower = [f"{what} {a:.3g} vs {b:.3g}" for what, pairs in
              (("iterations", iterations), ("FLOPs", flops))
              for a, b in pairs if not a <= (1 - margin) * b]
    return outcome(not slower, "not faster on " + ", ".join(slower))


def growth(values: Sequence[float]) -> float | None:
    """Mean of the last third over the mean of the first third (1 = no growth)."""
    third = max(1, len(values) // 3)
    first = sum(values[:third]) / third
    return (sum(values[-third:]) / third) / first if first else None


def growth_rule(limit: float = GROWTH_LIMIT) -> str:
    return (f"mean of the last third of the skills ≤ {limit:g} × mean of the first third, in "
            "every seed (at least 3 skills stored)")


def judge_growth(by_seed: Sequence[Sequence[float]], limit: float = GROWTH_LIMIT) -> Outcome:
    if min(len(values) for values in by_seed) < 3:
        return Outcome(NOT_TESTED, "fewer than 3 skills stored")
    ratios = [growth(values) for values in by_seed]
    worst = max(r if r is not None else np.inf for r in ratios)
    return outcome(worst <= limit, f"ratio up to {worst:.2f}")


# ---------------------------------------------------------------------------- formatting
def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def spread(values: Sequence[float], points: bool = False, digits: int = 1) -> str:
    """``mean ± std`` over seeds (population std; a single value stands alone)."""
    array = np.asarray(values, dtype=np.float64)
    scale, unit = (100, "%") if points else (1, "")
    text = f"{scale * array.mean():.{digits}f}{unit}"
    return text if len(array) == 1 else f"{text} ± {scale * array.std():.{digits}f}{unit}"
