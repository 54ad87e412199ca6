"""Every default chosen by ``clbench tune`` equals its committed record's choice, the record
was run on validation data, and the code cites the record next to the default."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from baselines import ewc, lwf, si
from clbench import recipe

ROOT = Path(__file__).resolve().parent.parent
# (record, the module that defines and cites the defaults, {grid key: the default in the code})
CITED = [
    ("leaderboard/tuning/recipe.json", recipe,
     {"lr": recipe.DEFAULT.lr, "momentum": recipe.DEFAULT.momentum}),
    ("leaderboard/tuning/ewc.json", ewc, {"ewc_lambda": ewc.EWC_LAMBDA}),
    ("leaderboard/tuning/online_ewc.json", ewc, {"ewc_lambda": ewc.ONLINE_EWC_LAMBDA}),
    ("leaderboard/tuning/si.json", si, {"si_c": si.SI_C}),
    ("leaderboard/tuning/lwf.json", lwf, {"distill_weight": lwf.DISTILL_WEIGHT}),
]


@pytest.mark.parametrize(("path", "module", "defaults"), CITED, ids=[c[0] for c in CITED])
def test_default_is_its_records_choice(path, module, defaults):
    record = json.loads((ROOT / path).read_text())
    assert record["schema"] == "clbench.tuning/1" and record["status"] == "complete"
    assert record["env"]["kwargs"]["evaluation"] == "validation"
    chosen = record["chosen"]["setting"]
    assert {key: chosen[key] for key in defaults} == defaults, (
        f"a default differs from the choice of {path}: rerun its command "
        f"({record['command']}) or change the default")
    assert path in inspect.getsource(module), f"{module.__name__} does not cite {path}"


@pytest.mark.parametrize(("path", "module", "defaults"), CITED[1:], ids=[c[0] for c in CITED[1:]])
def test_method_records_were_run_under_the_current_shared_recipe(path, module, defaults):
    """A method's strength is only meaningful for the recipe it was tuned with."""
    record = json.loads((ROOT / path).read_text())
    for setting in record["settings"]:
        for run in setting["runs"]:
            if run["status"] == "complete":
                assert run["recipe"] == recipe.DEFAULT.as_dict(), (path, run["recipe"])
