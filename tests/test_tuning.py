"""``clbench tune``: grid parsing, the selection rule, refusals, and a tiny grid end to end."""

from __future__ import annotations

import inspect
import json

import gymnasium
import pytest

from clbench.cli import main
from clbench.env import TaskStreamEnv
from clbench.tuning import (
    RULE,
    TuningError,
    choose,
    parse_grid,
    parse_seeds,
    require_validation_split,
    settings_of,
    table,
    tune,
)

TINY = {"n_tasks": 2, "max_train_per_task": 60, "max_test_per_task": 20}
ENV_ID = "clbench/SplitMNIST5k-v0"
HAS_VALIDATION = "evaluation" in inspect.signature(TaskStreamEnv).parameters
NO_VALIDATION_ID = "clbench-tests/NoValidation-v0"
if NO_VALIDATION_ID not in gymnasium.registry:
    gymnasium.register(NO_VALIDATION_ID,
                       entry_point="gymnasium.envs.classic_control:CartPoleEnv")


def test_grid_and_seeds_parse_as_json_values_in_order():
    grid = parse_grid(["lr=0.01,0.05", "fisher=true,expected", "epochs=5"])
    assert grid == {"lr": [0.01, 0.05], "fisher": [True, "expected"], "epochs": [5]}
    assert settings_of(grid)[:2] == [{"lr": 0.01, "fisher": True, "epochs": 5},
                                     {"lr": 0.01, "fisher": "expected", "epochs": 5}]
    assert len(settings_of(grid)) == 4 and parse_seeds("0,1,2") == [0, 1, 2]
    for bad, message in ((["lr"], "key=v1"), (["lr=1", "lr=2"], "twice"),
                         (["lr=1,1"], "repeats")):
        with pytest.raises(TuningError, match=message):
            parse_grid(bad)
    with pytest.raises(TuningError, match="'0,a'"):
        parse_seeds("0,a")


def entry(mean: float, state_bytes: int) -> dict:
    return {"summary": {"mean": mean}, "mean_state_bytes": state_bytes}


def test_rule_takes_the_best_mean_and_breaks_ties_toward_smaller_then_earlier():
    assert choose([entry(0.90, 10), entry(0.93, 10), entry(0.92, 5)], 0.001) == 1
    # within one validation example of the best: tied; the smaller state wins
    assert choose([entry(0.90, 10), entry(0.93, 10), entry(0.925, 5)], 0.01) == 2
    # tied and as small: the first in grid order
    assert choose([entry(0.93, 10), entry(0.925, 10)], 0.01) == 0
    assert "highest mean validation ACC" in RULE


def test_tuning_never_runs_on_the_test_split_or_on_an_env_without_validation():
    with pytest.raises(TuningError, match="evaluation='test'"):
        require_validation_split(ENV_ID, {"evaluation": "test"})
    with pytest.raises(TuningError, match="cannot hold out a validation split"):
        require_validation_split(NO_VALIDATION_ID, {})
    with pytest.raises(TuningError, match="'clbench/Nope-v0'"):
        require_validation_split("clbench/Nope-v0", {})
    with pytest.raises(TuningError, match="both a fixed --agent-arg and a --grid key"):
        tune("naive", ENV_ID, {"lr": [0.1]}, [0], agent_kwargs={"lr": 0.2})


@pytest.mark.skipif(not HAS_VALIDATION, reason="needs the env's validation split")
def test_a_setting_the_agent_refuses_stops_the_command_before_any_run(tmp_path):
    with pytest.raises(TuningError, match="learning_rate=0.1"):
        tune("naive", ENV_ID, {"learning_rate": [0.1]}, [0], out=tmp_path / "t.json")
    with pytest.raises(TuningError, match="lr=-1"):
        tune("naive", ENV_ID, {"lr": [0.1, -1]}, [0], out=tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_cli_refuses_an_env_without_validation_with_a_clear_message(capsys, tmp_path):
    code = main(["tune", "--agent", "naive", "--env", NO_VALIDATION_ID, "--grid", "lr=0.1",
                 "--seeds", "0", "--out", str(tmp_path / "t.json")])
    assert code == 2
    assert "never scores on the test split" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.skipif(not HAS_VALIDATION, reason="the env has no validation split yet "
                    "(evaluation='validation' comes with the scenario branch)")
def test_a_tiny_grid_end_to_end_writes_a_record_and_resumes_from_it(tmp_path, capsys):
    out = tmp_path / "independent.json"
    args = ["tune", "--agent", "independent", "--env", ENV_ID, "--grid", "epochs=0,1",
            "--seeds", "0,1", "--agent-arg", "holdout_fraction=0", "--out", str(out),
            *[f"--env-arg={key}={value}" for key, value in TINY.items()]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["status"] == "complete" and record["env"]["kwargs"]["evaluation"] == "validation"
    assert record["grid"] == {"epochs": [0, 1]} and record["seeds"] == [0, 1]
    assert record["command"].startswith("clbench tune --agent independent")
    assert record["versions"]["clbench"] and "git_commit" in record
    runs = [run for setting in record["settings"] for run in setting["runs"]]
    assert [run["seed"] for run in runs] == [0, 1, 0, 1]
    assert all(run["recipe"]["holdout_fraction"] == 0 for run in runs)
    # trained nets beat untrained ones on validation, and the table marks the choice
    assert record["chosen"]["setting"] == {"epochs": 1}
    assert table(record) in printed and "<-" in table(record).splitlines()[3]
    assert main(args) == 0  # the same request again reuses every finished run
    assert capsys.readouterr().out.count("kept from the record") == 4
    with pytest.raises(TuningError, match="another request"):
        tune("independent", ENV_ID, {"epochs": [1]}, [0], env_kwargs=TINY, out=out)
    # runs made by other code (another commit: e.g. a changed default recipe) are not reused
    record["git_commit"] = "0" * 40
    out.write_text(json.dumps(record))
    with pytest.raises(TuningError, match="git commit differ"):
        tune("independent", ENV_ID, {"epochs": [0, 1]}, [0, 1], env_kwargs=TINY,
             agent_kwargs={"holdout_fraction": 0}, out=out)


def test_show_prints_a_records_table_and_choice(tmp_path, capsys):
    record = {"schema": "clbench.tuning/1", "command": "clbench tune --agent si ...",
              "grid": {"si_c": [10, 100]}, "seeds": [0, 1], "rule": RULE, "resolution": 0.004,
              "chosen": {"index": 1, "setting": {"si_c": 100}},
              "settings": [
                  {"setting": {"si_c": 10}, "failed_seeds": [1], "mean_state_bytes": 5.0,
                   "summary": {"mean": 0.9, "std": None, "worst": 0.9},
                   "runs": [{"seed": 0, "acc": 0.9}, {"seed": 1, "acc": None}]},
                  {"setting": {"si_c": 100}, "failed_seeds": [], "mean_state_bytes": 5.0,
                   "summary": {"mean": 0.95, "std": 0.01, "worst": 0.94},
                   "runs": [{"seed": 0, "acc": 0.96}, {"seed": 1, "acc": 0.94}]}]}
    path = tmp_path / "si.json"
    path.write_text(json.dumps(record))
    assert main(["tune", "--show", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "$ clbench tune --agent si ..."
    assert "| 10 | failed on seed 1 | - | 0.9000 | failed | 5 |  |" in lines
    assert "| 100 | 0.9500 ± 0.0100 | 0.9400 | 0.9600 | 0.9400 | 5 | <- |" in lines
    assert lines[-1] == "chosen: si_c=100"
    assert main(["tune", "--show", str(tmp_path / "absent.json")]) == 2
