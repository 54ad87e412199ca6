"""Every default chosen on validation equals its committed record's choice, the record was
run on validation data, and the code cites the record next to the default: the shared lr and
each method's own setting come from one ``clbench select`` record over every agent that
shares the recipe; the rest from ``clbench tune`` records."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.tnen import presets
from baselines import agem, ewc, lwf, replay, si
from clbench import recipe
from clbench.selection import RULE, select
from clbench.tuning import choice_given

ROOT = Path(__file__).resolve().parent.parent
TNEN = presets.PRESETS["default"]
SHARED = "leaderboard/tuning/shared_lr.json"
# Every agent that trains with the shared recipe and takes its arguments, each with the module
# that defines and cites its own defaults and those defaults (none: only the lr was tuned).
SELECTED = [
    ("naive", None, {}), ("independent", None, {}), ("joint", None, {}), ("pnn", None, {}),
    ("linear", None, {}),
    ("ewc", ewc, {"ewc_lambda": ewc.EWC_LAMBDA}),
    ("online_ewc", ewc, {"ewc_lambda": ewc.ONLINE_EWC_LAMBDA}),
    ("si", si, {"si_c": si.SI_C}),
    ("lwf", lwf, {"distill_weight": lwf.DISTILL_WEIGHT}),
    ("replay", replay, {"replay_batch_size": replay.REPLAY_BATCH_SIZE}),
    ("agem", agem, {"memory_batch_size": agem.MEMORY_BATCH_SIZE}),
]
# (record, the module that defines and cites the defaults, {grid key: the default in the code})
# for the records of one agent; the recipe's records choose momentum and patience at the
# shared lr that SHARED chose.
CITED = [
    ("leaderboard/tuning/recipe.json", recipe,
     {"momentum": recipe.DEFAULT.momentum, "patience": recipe.DEFAULT.patience}),
    ("leaderboard/tuning/recipe_full.json", recipe,
     {"momentum": recipe.DEFAULT.momentum, "patience": recipe.DEFAULT.patience}),
    ("leaderboard/tuning/tnen.json", presets, {"en_lr": TNEN["en_lr"]}),
    ("leaderboard/tuning/tnen_rounding.json", presets,
     {"refine_epochs": TNEN["refine_epochs"], "latent_noise": TNEN["latent_noise"]}),
    ("leaderboard/tuning/tnen_keep_codes.json", presets, {"keep_codes": TNEN["keep_codes"]}),
    ("leaderboard/tuning/tnen_shared_init.json", presets, {"shared_init": TNEN["shared_init"]}),
]


def load(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def test_the_shared_lr_and_each_agents_setting_are_the_selections_choice():
    selection = load(SHARED)
    assert selection["schema"] == "clbench.selection/1" and selection["status"] == "complete"
    assert selection["key"] == "lr"
    assert selection["chosen"]["value"] == recipe.DEFAULT.lr, (
        f"the recipe's lr differs from the choice of {SHARED}: rerun its command "
        f"({selection['command']}) or change clbench.recipe.DEFAULT")
    assert SHARED in inspect.getsource(recipe)
    assert set(selection["agents"]) == {agent for agent, _, _ in SELECTED}, (
        "the shared lr must be chosen over every agent that trains with the shared recipe")
    for agent, module, defaults in SELECTED:
        assert selection["chosen"]["settings"][agent] == {"lr": recipe.DEFAULT.lr, **defaults}, (
            f"{agent}'s default differs from the choice of {SHARED}")
        if module is not None:
            assert SHARED in inspect.getsource(module), f"{module.__name__} does not cite {SHARED}"


def test_the_selection_is_what_the_rule_gives_on_its_records_now():
    """Recomputed from the committed inputs with today's code: a hand-edited choice, or a
    change to the rule after the record was made, fails here."""
    selection = load(SHARED)
    again = select([ROOT / item["path"] for item in selection["inputs"]], selection["key"])
    assert selection["rule"] == RULE
    assert again["chosen"] == selection["chosen"], (
        f"{SHARED} no longer follows from its records: rerun its command "
        f"({selection['command']})")
    assert again["scores"] == selection["scores"]


def test_the_selection_was_made_from_the_committed_records():
    """Each input is committed as it was selected from (its SHA-256), ran on validation, and
    ran the shared recipe apart from the keys its grid varied."""
    selection = load(SHARED)
    assert {item["stream"] for item in selection["inputs"]} == set(selection["streams"])
    for item in selection["inputs"]:
        data = (ROOT / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"], (
            f"{item['path']} changed after {SHARED} was made from it: rerun `clbench select`")
        record = json.loads(data)
        assert record["env"]["kwargs"]["evaluation"] == "validation"
        for setting in record["settings"]:
            for run in setting["runs"]:
                if run["status"] == "complete":
                    expected = {**recipe.DEFAULT.as_dict(),
                                **{k: v for k, v in setting["setting"].items()
                                   if k in recipe.FIELDS}}
                    assert run["recipe"] == expected, (item["path"], run["recipe"])


@pytest.mark.parametrize(("path", "module", "defaults"), CITED, ids=[c[0] for c in CITED])
def test_default_is_its_records_choice(path, module, defaults):
    record = load(path)
    assert record["schema"] == "clbench.tuning/1" and record["status"] == "complete"
    assert record["env"]["kwargs"]["evaluation"] == "validation"
    fixed = {"lr": recipe.DEFAULT.lr} if "lr" in record["grid"] else {}
    chosen = choice_given(record, fixed)
    assert {key: chosen[key] for key in defaults} == defaults, (
        f"a default differs from the choice of {path}: rerun its command "
        f"({record['command']}) or change the default")
    assert path in inspect.getsource(module), f"{module.__name__} does not cite {path}"


# Records that tune the shared recipe itself vary it; the others must run under it.
METHOD_RECORDS = [c for c in CITED if c[1] is not recipe]


@pytest.mark.parametrize(("path", "module", "defaults"), METHOD_RECORDS,
                         ids=[c[0] for c in METHOD_RECORDS])
def test_method_records_were_run_under_the_current_shared_recipe(path, module, defaults):
    """A method's strength is only meaningful for the recipe it was tuned with."""
    record = load(path)
    for setting in record["settings"]:
        for run in setting["runs"]:
            if run["status"] == "complete":
                assert run["recipe"] == recipe.DEFAULT.as_dict(), (path, run["recipe"])


def all_records() -> list[str]:
    return [path for path, _, _ in CITED] + [
        item["path"] for item in json.loads((ROOT / SHARED).read_text())["inputs"]]


@pytest.mark.parametrize("path", all_records())
def test_records_were_run_on_a_commit_of_this_history(path):
    """A record made on a commit outside the project's history cannot be rerun as it was."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the records' commits cannot be looked up")
    commit = json.loads((ROOT / path).read_text())["git_commit"]
    found = subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", commit,
                            "HEAD"], capture_output=True, text=True)
    assert found.returncode == 0, (f"{path} was run on {commit}, which is not in this "
                                   f"checkout's history ({found.stderr.strip()}): rerun its "
                                   "command on a commit of the branch")
