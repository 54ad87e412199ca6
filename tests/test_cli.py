"""The clbench command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clbench.cli import main, parse_assignments
from clbench.results import load_result


def test_parse_assignments_reads_json_values():
    assert parse_assignments(["epochs=2", "lr=0.1", "dtype=int8", "flag=true", "x=null"],
                             "--agent-arg") == {"epochs": 2, "lr": 0.1, "dtype": "int8",
                                                "flag": True, "x": None}


def test_run_writes_a_result_and_prints_tables(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["run", "--env", "clbench/SplitMNIST5k-v0", "--agent", "naive",
                 "--agent-arg", "epochs=1", "--env-arg", "max_train_per_task=100",
                 "--env-arg", "max_test_per_task=40", "--seed", "3", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    result = load_result(out)
    assert result.status == "complete" and result.seed == 3
    assert result.agent == {"name": "naive", "kwargs": {"epochs": 1}}
    assert result.env["kwargs"]["max_train_per_task"] == 100
    assert "| 4 | mnist5k:8\\|9 |" in printed  # the task name's pipe does not split the cell
    assert "| naive | clbench/SplitMNIST5k-v0 | 3 |" in printed

    assert main(["table", "--runs", str(out), str(out)]) == 0
    assert capsys.readouterr().out.count("| naive |") == 2
    assert main(["table", str(out), str(out)]) == 0  # grouped: one seed twice is refused
    assert "the same seed twice" in capsys.readouterr().err


def test_run_reports_agent_failures_and_keeps_the_file(tmp_path, capsys):
    out = tmp_path / "bad.json"
    code = main(["run", "--env", "clbench/SplitMNIST5k-v0", "--agent",
                 "agents_for_tests:WrongShape", "--out", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "failed in predict on task 0" in err and str(out) in err
    assert json.loads(out.read_text())["status"] == "failed"


def test_bad_input_is_a_clear_error(capsys):
    assert main(["run", "--env", "clbench/SplitMNIST5k-v0", "--agent", "nope", "--quiet"]) == 2
    assert "unknown agent 'nope'" in capsys.readouterr().err
    assert main(["table", "missing.json"]) == 2


def test_list_shows_envs_and_agents():
    done = subprocess.run([sys.executable, "-m", "clbench", "list"], capture_output=True,
                          text=True, check=True)
    assert "clbench/TupleMNIST5k-v0" in done.stdout
    assert "naive" in done.stdout and "baselines.naive:Naive" in done.stdout


def test_eval_every_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "sparse.json"
    assert main(["run", "--env", "clbench/SplitMNIST5k-v0", "--agent", "naive", "--agent-arg",
                 "epochs=1", "--env-arg", "n_tasks=3", "--env-arg", "max_train_per_task=40",
                 "--env-arg", "max_test_per_task=10", "--device", "cpu", "--quiet",
                 "--no-seal", "--no-flops", "--eval-every", "3", "--out", str(out)]) == 0
    result = load_result(out)
    assert result.eval_every == 3 and result.accuracy[1][0] is None
    assert "| complete, R every 3 |" in capsys.readouterr().out
    assert main(["table", "--runs", str(out)]) == 0
    assert "| complete, R every 3 |" in capsys.readouterr().out
    for bad in ("0", "two", "1.5"):
        with pytest.raises(SystemExit) as stopped:
            main(["run", "--env", "clbench/SplitMNIST5k-v0", "--agent", "naive",
                  "--eval-every", bad])
        assert stopped.value.code == 2
        assert f"--eval-every: {bad!r} is not a whole number >= 1" in capsys.readouterr().err
    assert main(["run", "--env", "clbench/DomainSplitMNIST5k-v0", "--agent", "naive",
                 "--eval-every", "2", "--quiet", "--out", str(tmp_path / "d.json")]) == 2
    assert "eval_every=2 with scenario='domain'" in capsys.readouterr().err
