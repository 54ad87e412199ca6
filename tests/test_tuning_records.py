"""Every default chosen by ``clbench tune`` equals its committed record's choice, the record
was run on validation data, and the code cites the record next to the default."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.tnen import presets
from baselines import agem, ewc, lwf, replay, si
from clbench import recipe

ROOT = Path(__file__).resolve().parent.parent
TNEN = presets.PRESETS["default"]
# (record, the module that defines and cites the defaults, {grid key: the default in the code})
CITED = [
    ("leaderboard/tuning/recipe.json", recipe,
     {"lr": recipe.DEFAULT.lr, "momentum": recipe.DEFAULT.momentum,
      "patience": recipe.DEFAULT.patience}),
    ("leaderboard/tuning/recipe_full.json", recipe,
     {"lr": recipe.DEFAULT.lr, "momentum": recipe.DEFAULT.momentum,
      "patience": recipe.DEFAULT.patience}),
    ("leaderboard/tuning/tnen.json", presets, {"en_lr": TNEN["en_lr"]}),
    ("leaderboard/tuning/tnen_rounding.json", presets,
     {"refine_epochs": TNEN["refine_epochs"], "latent_noise": TNEN["latent_noise"]}),
    ("leaderboard/tuning/tnen_keep_codes.json", presets, {"keep_codes": TNEN["keep_codes"]}),
    ("leaderboard/tuning/tnen_shared_init.json", presets, {"shared_init": TNEN["shared_init"]}),
    ("leaderboard/tuning/ewc.json", ewc, {"ewc_lambda": ewc.EWC_LAMBDA}),
    ("leaderboard/tuning/online_ewc.json", ewc, {"ewc_lambda": ewc.ONLINE_EWC_LAMBDA}),
    ("leaderboard/tuning/si_full.json", si, {"si_c": si.SI_C}),
    ("leaderboard/tuning/lwf.json", lwf, {"distill_weight": lwf.DISTILL_WEIGHT}),
    ("leaderboard/tuning/replay.json", replay, {"replay_batch_size": replay.REPLAY_BATCH_SIZE}),
    ("leaderboard/tuning/agem.json", agem, {"memory_batch_size": agem.MEMORY_BATCH_SIZE}),
]


@pytest.mark.parametrize(("path", "module", "defaults"), CITED, ids=[c[0] for c in CITED])
def test_default_is_its_records_choice(path, module, defaults):
    record = json.loads((ROOT / path).read_text())
    assert record["schema"] == "clbench.tuning/1" and record["status"] == "complete"
    assert record["env"]["kwargs"]["evaluation"] == "validation"
    chosen = {key: record["chosen"]["setting"][key] for key in defaults}
    assert chosen == defaults, (f"a default differs from the choice of {path}: rerun its "
                                f"command ({record['command']}) or change the default")
    assert path in inspect.getsource(module), f"{module.__name__} does not cite {path}"


# Records that tune the shared recipe itself vary it; the others must run under it.
METHOD_RECORDS = [c for c in CITED if c[1] is not recipe]


@pytest.mark.parametrize(("path", "module", "defaults"), METHOD_RECORDS,
                         ids=[c[0] for c in METHOD_RECORDS])
def test_method_records_were_run_under_the_current_shared_recipe(path, module, defaults):
    """A method's strength is only meaningful for the recipe it was tuned with."""
    record = json.loads((ROOT / path).read_text())
    for setting in record["settings"]:
        for run in setting["runs"]:
            if run["status"] == "complete":
                assert run["recipe"] == recipe.DEFAULT.as_dict(), (path, run["recipe"])


@pytest.mark.parametrize(("path", "module", "defaults"), CITED, ids=[c[0] for c in CITED])
def test_records_were_run_on_a_commit_of_this_history(path, module, defaults):
    """A record made on a commit outside the project's history cannot be rerun as it was."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the records' commits cannot be looked up")
    commit = json.loads((ROOT / path).read_text())["git_commit"]
    found = subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", commit,
                            "HEAD"], capture_output=True, text=True)
    assert found.returncode == 0, (f"{path} was run on {commit}, which is not in this "
                                   f"checkout's history ({found.stderr.strip()}): rerun its "
                                   "command on a commit of the branch")
