"""``clbench select``: the shared value is chosen over every agent and stream by its printed
rule, and records that cannot be combined are refused by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clbench.selection import SelectionError, select
from clbench.tuning import SCHEMA as TUNING_SCHEMA
from clbench.tuning import settings_of

RESOLUTION = 0.001


def record(agent: str, stream: str, grid: dict, accs: dict, seeds=(0, 1, 2)) -> dict:
    """A finished tuning record; ``accs`` maps a setting's grid values (a tuple, in grid
    order) to its per-seed ACCs, ``None`` for a seed that failed."""
    settings = []
    for setting in settings_of(grid):
        per_seed = accs[tuple(setting.values())]
        done = [acc for acc in per_seed if acc is not None]
        failed = [seed for seed, acc in zip(seeds, per_seed, strict=True) if acc is None]
        settings.append({
            "setting": setting,
            "runs": [{"seed": seed, "status": "failed" if acc is None else "complete",
                      "acc": acc, "final_state_bytes": 1000}
                     for seed, acc in zip(seeds, per_seed, strict=True)],
            "failed_seeds": failed,
            "summary": {"mean": sum(done) / len(done)} if done else None,
            "mean_state_bytes": 1000.0 if done else None,
        })
    return {"schema": TUNING_SCHEMA, "agent": agent, "command": f"clbench tune --agent {agent}",
            "env": {"id": stream, "kwargs": {"evaluation": "validation"}},
            "fixed_agent_kwargs": {}, "grid": grid, "seeds": list(seeds),
            "status": "complete", "resolution": RESOLUTION, "settings": settings}


def write(tmp_path, *records) -> list[str]:
    paths = []
    for index, item in enumerate(records):
        path = tmp_path / f"r{index}.json"
        path.write_text(json.dumps(item))
        paths.append(str(path))
    return paths


def flat(acc):
    return [acc, acc, acc]


# Two agents on two streams. The stiff one (a penalty) diverges at its strongest setting
# with the large lr on stream A; the free one does a little better at the large lr.
STIFF_GRID = {"lr": [0.01, 0.05], "strength": [1, 10, 100]}
FREE_GRID = {"lr": [0.01, 0.05]}


def stiff():
    a = record("stiff", "A", STIFF_GRID, {
        (0.01, 1): flat(0.90), (0.01, 10): flat(0.95), (0.01, 100): flat(0.94),
        (0.05, 1): flat(0.93), (0.05, 10): flat(0.97), (0.05, 100): [0.96, None, 0.96]})
    b = record("stiff", "B", STIFF_GRID, {
        (0.01, 1): flat(0.92), (0.01, 10): flat(0.94), (0.01, 100): flat(0.93),
        (0.05, 1): flat(0.80), (0.05, 10): flat(0.99), (0.05, 100): flat(0.99)})
    return a, b


def free():
    return (record("free", "A", FREE_GRID, {(0.01,): flat(0.96), (0.05,): flat(0.97)}),
            record("free", "B", FREE_GRID, {(0.01,): flat(0.95), (0.05,): flat(0.96)}))


def test_the_value_is_chosen_over_agents_and_streams(tmp_path):
    selection = select(write(tmp_path, *stiff(), *free()), "lr")
    settings = selection["agents"]["stiff"]["settings"]
    # strength 100 at lr 0.05 failed a seed on stream A: not eligible though stream B scores
    # it best; strength 10 there completed everywhere, but the next step along its own key
    # failed (the edge of divergence), so stiff's best at 0.05 is strength 1
    assert not settings[5]["completed"] and not settings[5]["eligible"]
    assert settings[4]["completed"] and settings[4]["next_failed"] == ["strength"]
    assert not settings[4]["eligible"]
    assert settings[2]["eligible"] and settings[2]["next_failed"] == []  # the grid's top
    at_05 = settings[selection["agents"]["stiff"]["best"]["0.05"]]
    assert at_05["setting"] == {"lr": 0.05, "strength": 1}
    assert at_05["score"] == pytest.approx(0.865)
    scores = {item["value"]: item["score"] for item in selection["scores"]}
    assert scores[0.01] == pytest.approx((0.945 + 0.955) / 2)
    assert scores[0.05] == pytest.approx((0.865 + 0.965) / 2)
    assert selection["chosen"] == {"value": 0.01, "settings": {
        "free": {"lr": 0.01}, "stiff": {"lr": 0.01, "strength": 10}}}
    regret = selection["scores"][0]["regret"]
    assert regret["free"] == pytest.approx(0.01) and regret["stiff"] == pytest.approx(0.0)


def test_a_value_that_leaves_an_agent_untrainable_is_out(tmp_path):
    a, b = free()
    b["settings"][1] = {**b["settings"][1], "failed_seeds": [0, 1, 2], "summary": None}
    selection = select(write(tmp_path, a, b), "lr")
    assert selection["scores"][1]["score"] is None
    assert selection["scores"][1]["without_eligible_setting"] == ["free"]
    assert selection["chosen"]["value"] == 0.01


def test_values_within_the_resolution_tie_and_the_first_listed_wins(tmp_path):
    a = record("free", "A", FREE_GRID, {(0.01,): flat(0.9600), (0.05,): flat(0.9604)})
    b = record("free", "B", FREE_GRID, {(0.01,): flat(0.9600), (0.05,): flat(0.9604)})
    assert select(write(tmp_path, a, b), "lr")["chosen"]["value"] == 0.01
    a = record("free", "A", FREE_GRID, {(0.01,): flat(0.9600), (0.05,): flat(0.9700)})
    b = record("free", "B", FREE_GRID, {(0.01,): flat(0.9600), (0.05,): flat(0.9700)})
    assert select(write(tmp_path, a, b), "lr")["chosen"]["value"] == 0.05


def test_agents_tie_within_the_resolution_divided_by_the_number_of_agents(tmp_path):
    """Two agents: the values' means tie under resolution / 2 (two streams) / 2 (agents),
    not under resolution / 2 alone."""
    def pair(agent, small, large):
        return [record(agent, stream, FREE_GRID, {(0.01,): flat(small), (0.05,): flat(large)})
                for stream in ("A", "B")]
    # means 0.9600 vs 0.9602: within 0.00025, a tie -> the first listed
    records = [*pair("one", 0.9600, 0.9602), *pair("two", 0.9600, 0.9602)]
    assert select(write(tmp_path, *records), "lr")["chosen"]["value"] == 0.01
    # means 0.9600 vs 0.9604: beyond 0.00025 though within resolution / 2 = 0.0005
    records = [*pair("one", 0.9600, 0.9604), *pair("two", 0.9600, 0.9604)]
    assert select(write(tmp_path, *records), "lr")["chosen"]["value"] == 0.05


def with_recipe(item: dict, **fields) -> dict:
    """``item`` whose complete runs record the shared recipe, changed by ``fields``."""
    trained = {"optimizer": "sgd", "momentum": 0.9, "batch_size": 64, **fields}
    settings = [{**setting, "runs": [{**run, "recipe": {**trained, **setting["setting"]}}
                                     for run in setting["runs"]]}
                for setting in item["settings"]]
    return {**item, "settings": settings}


def one_run_differs(item: dict) -> dict:
    """``item`` whose last run of its last setting trained with momentum 0.5."""
    last = item["settings"][-1]
    runs = [*last["runs"][:-1], {**last["runs"][-1],
                                 "recipe": {**last["runs"][-1]["recipe"], "momentum": 0.5}}]
    return {**item, "settings": [*item["settings"][:-1], {**last, "runs": runs}]}


@pytest.mark.parametrize(("mend", "message"), [
    (lambda recs: recs[:3], "has no record on B"),
    (lambda recs: [{**recs[0], "env": {"id": "A", "kwargs": {}}}, *recs[1:]],
     "r0.json was not run on validation data \\(evaluation=None\\)"),
    (lambda recs: [with_recipe(recs[0], momentum=0.5),
                   *[with_recipe(item) for item in recs[1:]]],
     "r1.json and .*r0.json trained with different recipes \\(momentum 0.9 vs 0.5\\)"),
    (lambda recs: [one_run_differs(with_recipe(recs[0])),
                   *[with_recipe(item) for item in recs[1:]]],
     "r0.json and .*r0.json trained with different recipes \\(momentum 0.5 vs 0.9\\)"),
    (lambda recs: [*recs[:3], {**recs[3], "fixed_agent_kwargs": {"epochs": 3}}],
     "agent 'free'.s records differ in their fixed_agent_kwargs"),
    (lambda recs: [[1, 2], *recs[1:]], "schema 'list', expected"),
    (lambda recs: [{k: v for k, v in recs[0].items() if k != "grid"}, *recs[1:]],
     "lacks the field\\(s\\) grid"),
    (lambda recs: [*recs[:2], {**recs[2], "grid": {"lr": [0.01, 0.1]}}, recs[3]],
     "differ in their values of 'lr'"),
    (lambda recs: [recs[0], recs[0], *recs[1:]], "are both agent 'stiff' on A"),
    (lambda recs: [{**recs[0], "seeds": [0, 1]}, *recs[1:]], "differ in their seeds"),
    (lambda recs: [{**recs[0], "status": "running"}, *recs[1:]], "is unfinished"),
    (lambda recs: [{**recs[0], "schema": "other"}, *recs[1:]], "is not a tuning record"),
])
def test_records_that_cannot_be_combined_are_refused_by_name(tmp_path, mend, message):
    records = mend([*stiff(), *free()])
    with pytest.raises(SelectionError, match=message):
        select(write(tmp_path, *records), "lr")


def test_a_record_without_the_key_in_its_grid_is_refused(tmp_path):
    a, b = free()
    with pytest.raises(SelectionError, match=r"r0.json does not vary 'momentum'"):
        select(write(tmp_path, a, b), "momentum")


def test_the_command_writes_the_record_and_show_prints_it(tmp_path):
    paths = write(tmp_path, *stiff(), *free())
    out = tmp_path / "shared.json"
    made = subprocess.run([sys.executable, "-m", "clbench", "select", "--key", "lr", *paths,
                           "--out", str(out)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    saved = json.loads(out.read_text())
    assert saved["chosen"]["value"] == 0.01 and len(saved["inputs"]) == 4
    assert all(len(item["sha256"]) == 64 for item in saved["inputs"])
    shown = subprocess.run([sys.executable, "-m", "clbench", "select", "--show", str(out)],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "| stiff | 0.9450 (strength=10) | 0.8650 (strength=1) | 0.0000 |" in shown.stdout
    assert "chosen: lr=0.01" in shown.stdout and shown.stdout in made.stdout
    assert "  stiff: lr=0.05, strength=10 (score 0.9800)" in shown.stdout
