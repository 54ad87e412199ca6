"""The paper report's verdicts, on constructed records: each claim agrees only when its
printed rule holds for the mean *and* the worst network in every seed, speed is judged on
iterations and FLOPs (not seconds), claims about k skills only on runs that stored k, and
differences under one test example are ties."""

from __future__ import annotations

import pytest

from agents.tnen.paper import batch, continual, split
from agents.tnen.paper.verdicts import (
    AGREES,
    DIFFERS,
    NOT_TESTED,
    Outcome,
    accuracy_gaps,
    beyond_resolution,
    gap_facts,
    growth,
    judge_faster,
    judge_growth,
    judge_near,
    spread,
    verdict,
)


def test_differences_under_one_test_example_are_ties():
    assert beyond_resolution(0.003, 250) == 0.0  # 0.4 points resolution
    assert beyond_resolution(-0.0039, 250) == 0.0
    assert beyond_resolution(0.004, 250) == 0.004
    assert accuracy_gaps([0.9, 0.9], [0.897, 0.85], [250, 250]) == [0.0, pytest.approx(0.05)]


def test_near_rule_judges_the_worst_network_not_only_the_mean():
    # 333 networks: the mean loses under a point, one network falls to chance
    original = [0.96] * 333
    reconstructed = [0.955] * 332 + [0.539]
    facts = gap_facts({0: (original, reconstructed, [300] * 333)})
    assert facts.mean_by_seed[0] < 0.02
    outcome = judge_near(facts)
    assert outcome.status == DIFFERS and "worst network lost 42.1% (seed 0, network 332)" \
        in outcome.why
    fine = gap_facts({0: (original, [0.955] * 333, [300] * 333),
                      1: (original, [0.95] * 333, [300] * 333)})
    assert judge_near(fine) == Outcome(AGREES)
    one_bad_seed = gap_facts({0: (original, [0.955] * 333, [300] * 333),
                              1: (original, [0.90] * 333, [300] * 333)})
    assert judge_near(one_bad_seed).status == DIFFERS


def test_speed_is_judged_on_iterations_and_flops_not_seconds():
    """The case that was called "faster" on wall time: chunks 24.46 s vs whole 24.55 s, but
    50 vs 20 iterations and 2.99e12 vs 1.14e12 FLOPs."""
    assert judge_faster([(50, 20)], [(2.99e12, 1.14e12)]).status == DIFFERS
    assert judge_faster([(10, 20)], [(1e12, 2e12)]) == Outcome(AGREES)
    assert judge_faster([(19, 20)], [(1e12, 2e12)]).status == DIFFERS  # under the 10% margin
    assert judge_faster([(10, 20), (30, 20)], [(1e12, 2e12)] * 2).status == DIFFERS  # a seed
    assert judge_faster([(None, 20)], [(None, 2e12)]).status == NOT_TESTED


def _run(met: bool, history: list[tuple[int, float, float, float]]) -> dict:
    """A split/batch run: checks of (iteration, seconds, flops, min cosine)."""
    return {"rule_met": met, "history": [
        {"iteration": i, "seconds": s, "flops": f, "cosine": [c, 1.0]} for i, s, f, c in history]}


def test_split_speed_compares_both_runs_at_the_same_level():
    figures = {"chunks": _run(True, [(0, 0, 0, 0.1), (50, 24.46, 2.99e12, 0.995)]),
               "whole": _run(True, [(0, 0, 0, 0.1), (20, 24.55, 1.14e12, 0.995)])}
    s = split.speed(figures)
    assert s["level"] == "the stopping rule" and s["iteration"] == [50, 20]
    assert judge_faster([tuple(s["iteration"])], [tuple(s["flops"])]).status == DIFFERS
    # neither met the rule: compared at the lower final cosine, where both got there
    figures = {"chunks": _run(False, [(0, 0, 0, 0.1), (10, 1, 1e9, 0.95), (20, 2, 2e9, 0.97)]),
               "whole": _run(False, [(0, 0, 0, 0.1), (10, 5, 5e9, 0.93), (20, 9, 9e9, 0.95)])}
    s = split.speed(figures)
    assert s["level"] == "min cosine 0.950" and s["iteration"] == [10, 20]
    # below cosine 0.9 nothing is encoded yet: not a speed comparison
    figures["whole"] = _run(False, [(0, 0, 0, 0.1), (20, 9, 9e9, 0.5)])
    assert split.speed(figures)["iteration"] == [None, None]


def _batch_record(seed: int, counts: dict[str, dict[int, list[float]]]) -> dict:
    """Batch records whose originals are 0.96 and reconstructions as given, per preset."""
    def run(reconstructed):
        k = len(reconstructed)
        return {"original_accuracy": [0.96] * k, "n_test": [300] * k, "rule_met": True,
                "iterations": 100, "storage_bytes": 1, "fp32_networks_bytes": 2,
                "history": [{"accuracy": reconstructed, "flops": 1e9}]}
    return {"seed": seed, "figures": {p: {"runs": {str(k): run(acc) for k, acc in runs.items()}}
                                      for p, runs in counts.items()}}


def test_batch_claims_on_constructed_records():
    records = [_batch_record(seed, {
        "paper": {2: [0.96, 0.96], 5: [0.95] * 5},
        "default": {2: [0.96, 0.96], 333: [0.955] * 332 + [0.539]}}) for seed in (0, 1, 2)]
    at_333, rising, _ = batch.claims(records)
    assert at_333[-1] == ("paper: not tested (stored at most 5 networks); default: differs "
                          "(worst network lost 42.1% (seed 0, network 332))")
    assert "gap (original − reconstructed test accuracy) ≤ 2 points" in at_333[1]
    assert rising[-1].startswith("paper: not tested ([10, 333] not run; agrees for [2, 5])")


def _stream_record(seed: int, stored: int, lost: float) -> dict:
    rows = [[0.95 - (lost if j == 0 and i == stored - 1 else 0) for j in range(i + 1)]
            for i in range(stored)]
    return {"seed": seed, "figures": {"paper": {"result": {
        "accuracy": rows, "tn_test_accuracy": [0.95] * stored, "n_test": [250] * stored}}}}


def test_claims_about_k_skills_are_judged_only_where_k_were_stored():
    records = [_stream_record(seed, 4, 0.0) for seed in (0, 1, 2)]
    outcome, measured = continual.judge_snapshots(records, "paper", (2, 4, 6, 10))
    assert outcome == Outcome("agrees after 2, 4; not tested after 6, 10",
                              "the run stored 4 skills")
    assert "after 6" not in measured and "over 3 seed(s)" in measured
    assert verdict({"paper": outcome}) == ("paper: agrees after 2, 4; not tested after 6, 10 "
                                           "(the run stored 4 skills)")
    records[2] = _stream_record(2, 4, 0.1)  # one seed's first skill lost 10 points at the end
    outcome, _ = continual.judge_snapshots(records, "paper", (2, 4, 6, 10))
    assert outcome.status == DIFFERS and "after 4" in outcome.why and "seed 2" in outcome.why


def test_growth_is_judged_in_every_seed_and_needs_three_skills():
    assert growth([10, 10, 10, 30, 30, 30]) == 3.0
    assert judge_growth([[10, 10, 10], [10, 10, 12]]) == Outcome(AGREES)
    assert judge_growth([[10, 10, 10], [10, 10, 40]]).status == DIFFERS
    assert judge_growth([[10, 10]]).status == NOT_TESTED


def test_spread_over_seeds():
    assert spread([0.5]) == "0.5"
    assert spread([0.95, 0.97], points=True) == "96.0% ± 1.0%"
