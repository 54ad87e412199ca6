"""Every bad input ends in one clear line and exit code 2 (usage) or 1 (run failure), never a
traceback (unless --debug); result files are validated before use; a write that fails leaves
the earlier file intact; result files get the user's normal file mode."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_results import make_result

from clbench import results
from clbench.checkpoint import folder_for
from clbench.cli import main
from clbench.data import registry
from clbench.results import Result, ResultFormatError, load_result

FAST_RUN = ["--agent-arg", "epochs=1", "--env-arg", "n_tasks=2", "--env-arg",
            "max_train_per_task=20", "--env-arg", "max_test_per_task=10", "--no-flops"]


def one_line(capsys) -> str:
    """The CLI's stderr, asserted to be one line without a traceback."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def run(*options: str, env: str = "clbench/SplitMNIST5k-v0", agent: str = "naive") -> int:
    return main(["run", "--env", env, "--agent", agent, "--quiet", "--device", "cpu", *options])


# ---------------------------------------------------------------- usage errors: exit 2

BAD_RUNS = [
    # (what is wrong, extra options, env id, expected words in the one line)
    ("unknown env id", [], "clbench/Nope-v0",
     ["unknown environment 'clbench/Nope-v0'", "did you mean"]),
    ("env id in the wrong case", [], "clbench/splitmnist5k-v0",
     ["did you mean clbench/SplitMNIST5k-v0"]),
    ("env id without its namespace", [], "SplitMNIST5k-v0",
     ["did you mean clbench/SplitMNIST5k-v0"]),
    ("not a clbench env", [], "CartPole-v1", ["not a clbench task stream"]),
    ("unknown make() kwarg", ["--env-arg", "n_task=3"], "clbench/SplitMNIST5k-v0",
     ["unknown make() argument(s) 'n_task'", "accepted: stream, dataset, tasks, n_tasks"]),
    ("kwarg of the wrong type", ["--env-arg", "n_tasks=abc"], "clbench/SplitMNIST5k-v0",
     ["n_tasks='abc' must be an integer"]),
    ("kwarg out of range", ["--env-arg", "positive_fraction=1.5"], "clbench/SplitMNIST5k-v0",
     ["positive_fraction=1.5 must be a number between 0 and 1"]),
    ("device given as env kwarg", ["--env-arg", "device=cpu"], "clbench/SplitMNIST5k-v0",
     ["use --device"]),
    ("bad task name", ["--env-arg", 'tasks=["mnist5k:1|1"]'], "clbench/SplitMNIST5k-v0",
     ["bad task name 'mnist5k:1|1'"]),
    ("agent arg lacking =", ["--agent-arg", "epochs"], "clbench/SplitMNIST5k-v0",
     ["--agent-arg 'epochs' is not of the form key=value"]),
    ("unknown agent", ["--agent", "nope"], "clbench/SplitMNIST5k-v0", ["unknown agent 'nope'"]),
] + [
    (f"tuples n_tasks={n}", ["--env-arg", f"n_tasks={n}"], "clbench/TupleMNIST-v0",
     [f"n_tasks={n} is out of range", "at most 12,990 such tasks"])
    for n in (0, -1, 13000, 1000000)
] + [
    ("split n_tasks=6", ["--env-arg", "n_tasks=6"], "clbench/SplitMNIST-v0",
     ["n_tasks=6 is out of range", "at most 5 such tasks"]),
    ("one_vs_rest n_tasks=11", ["--env-arg", "n_tasks=11"], "clbench/OneVsRestCIFAR10-v0",
     ["n_tasks=11 is out of range", "at most 10 such tasks"]),
]


def _no_data(*args, **kwargs):
    raise AssertionError("a dataset was loaded: the bad input was not refused before any work")


@pytest.fixture
def no_data_loading(monkeypatch):
    """Any dataset load fails the test: a bad input must be refused before any work."""
    monkeypatch.setattr(registry, "_load_cached", _no_data)


@pytest.mark.parametrize(("options", "env", "words"), [case[1:] for case in BAD_RUNS],
                         ids=[case[0] for case in BAD_RUNS])
def test_bad_run_requests_fail_at_once_in_one_line(tmp_path, capsys, options, env, words,
                                                   no_data_loading):
    out = tmp_path / "r.json"
    assert run(*options, "--out", str(out), env=env) == 2
    err = one_line(capsys)
    for word in words:
        assert word in err, err
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", "abc", "1.5", str(2**63)])
def test_bad_seeds_are_usage_errors(capsys, seed):
    with pytest.raises(SystemExit) as exit_:
        run("--seed", seed)
    assert exit_.value.code == 2
    assert "argument --seed" in capsys.readouterr().err


def test_out_naming_a_folder_is_a_usage_error(tmp_path, capsys):
    assert run("--out", str(tmp_path)) == 2
    assert "is a directory" in one_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown environment"):
        main(["--debug", "run", "--env", "clbench/Nope-v0", "--agent", "naive"])
    with pytest.raises(ValueError, match="unknown environment"):
        main(["run", "--debug", "--env", "clbench/Nope-v0", "--agent", "naive"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "clbench", "run", "--env", "clbench/TupleMNIST-v0", "--agent",
         "naive", "--env-arg", "n_tasks=13000", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("clbench: tuples: n_tasks=13000 is out of range")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# ---------------------------------------------------------------- result files: exit 2


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _edited(edit) -> dict:
    data = make_result()
    edit(data)
    return data


BAD_FILES = {
    "binary": (lambda p: p.write_bytes(bytes(range(256)) * 4), "binary, not UTF-8"),
    "empty": (lambda p: p.write_bytes(b""), "not valid JSON"),
    "not JSON": (lambda p: p.write_text("{result"), "not valid JSON"),
    "a JSON list": (lambda p: _write(p, [1, 2]), "field '<root>': expected dict"),
    "deeply nested": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
                      "nested too deeply"),
    "nested past the limit": (lambda p: _write(p, _edited(
        lambda d: d["agent"]["kwargs"].update(x=json.loads("[" * 40 + "]" * 40)))),
        "nested deeper than 32 levels"),
    "NaN": (lambda p: p.write_text(json.dumps(make_result()).replace(
        '"acc": 0.875', '"acc": NaN')), "holds NaN"),
    "Infinity in kwargs": (lambda p: p.write_text(json.dumps(make_result()).replace(
        '"kwargs": {}', '"kwargs": {"lr": -Infinity}', 1)), "holds -Infinity"),
    "overflowing float": (lambda p: p.write_text(json.dumps(make_result()).replace(
        '"wall_seconds": 60.0', '"wall_seconds": 1e999')), "not a finite number"),
    "integer of 5000 digits": (lambda p: p.write_text(json.dumps(make_result()).replace(
        '"seed": 0', '"seed": ' + "9" * 5000)), "not a result file"),
    "extra key": (lambda p: _write(p, _edited(lambda d: d.update(hidden=1))),
                  "field 'hidden': unknown field"),
    "extra nested key": (lambda p: _write(p, _edited(lambda d: d["storage"].update(extra=[]))),
                         "field 'storage.extra': unknown field"),
    "null learn_seconds": (lambda p: _write(p, _edited(
        lambda d: d["costs"]["learn_seconds"].__setitem__(0, None))),
        "field 'costs.learn_seconds[0]': expected int or float, got NoneType"),
    "negative bytes": (lambda p: _write(p, _edited(
        lambda d: d["storage"]["bytes"].__setitem__(0, -5))), "field 'storage.bytes[0]'"),
    "float bytes": (lambda p: _write(p, _edited(
        lambda d: d["storage"]["bytes"].__setitem__(0, 1.5))), "field 'storage.bytes[0]'"),
    "boolean seed": (lambda p: _write(p, _edited(lambda d: d.update(seed=True))),
                     "field 'seed': expected int, got a boolean"),
    "negative seed": (lambda p: _write(p, _edited(lambda d: d.update(seed=-1))),
                      "field 'seed'"),
    "agent name with a newline": (lambda p: _write(p, _edited(
        lambda d: d["agent"].update(name="naive\n| evil | row |"))), "field 'agent.name'"),
    "empty agent name": (lambda p: _write(p, _edited(lambda d: d["agent"].update(name=""))),
                         "field 'agent.name'"),
    "task name with a tab": (lambda p: _write(p, _edited(
        lambda d: d["env"]["task_names"].__setitem__(0, "a:0\t|1"))),
        "field 'env.task_names[0]'"),
    "lone surrogate": (lambda p: p.write_text(json.dumps(make_result()).replace(
        '"device": "cpu"', '"device": "\\ud800"')), "field 'device'"),
    "bad timestamp": (lambda p: _write(p, _edited(lambda d: d.update(started_at="yesterday"))),
                      "field 'started_at'"),
    "metric of the wrong type": (lambda p: _write(p, _edited(
        lambda d: d["metrics"].update(retained=0.5))), "field 'metrics.retained'"),
    "no tasks": (lambda p: _write(p, _edited(lambda d: d["env"].update(task_names=[]))),
                 "field 'env.task_names'"),
    "a directory": (lambda p: p.mkdir(), "is a directory that holds no result files"),
    "missing": (lambda p: None, "no result file or folder"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_table_refuses_bad_result_files_in_one_line(tmp_path, capsys, case):
    make, words = BAD_FILES[case]
    path = tmp_path / "result.json"
    make(path)
    with pytest.raises(ResultFormatError, match=str(path)):
        load_result(path)
    assert main(["table", str(path)]) == 2
    err = one_line(capsys)
    assert words in err and str(path) in err, err


def test_an_oversized_result_file_is_refused_before_it_is_parsed(tmp_path, monkeypatch,
                                                                 capsys):
    path = _write(tmp_path / "big.json", make_result())
    monkeypatch.setattr(results, "MAX_RESULT_BYTES", path.stat().st_size - 1)
    assert main(["table", str(path)]) == 2
    assert f"larger than {path.stat().st_size - 1:,} bytes" in one_line(capsys)


def test_an_unreadable_result_file_is_named(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "r.json", make_result())

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(results, "open", denied, raising=False)
    assert main(["table", str(path)]) == 2
    assert f"{path}: cannot read it (Permission denied)" in one_line(capsys)


def test_a_pipe_in_a_name_cannot_split_a_table_row(tmp_path, capsys):
    path = _write(tmp_path / "r.json", _edited(lambda d: d["agent"].update(name="a|b")))
    assert main(["table", "--runs", str(path)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| a\\|b | clbench/SplitMNIST5k-v0 |")
    assert row.replace("\\|", "").count("|") == 14  # 13 cells


def test_every_result_field_is_checked():
    # A field added to Result must get its check in validate_result: the format is complete
    # by construction (an unknown field is refused, a missing one named, a known one typed).
    # Optional fields (added after the schema, read with their defaults when missing) are
    # only checked for their type.
    data = make_result()
    for name in data:
        missing = {k: v for k, v in data.items() if k != name}
        if name in results.OPTIONAL_FIELDS:
            results.validate_result(missing)
        for broken in ([] if name in results.OPTIONAL_FIELDS else [missing]) + [
                {**data, name: [[["no field holds this"]]]}]:
            with pytest.raises(ResultFormatError, match=rf"field '{name}[.\[']"):
                results.validate_result(broken)


def test_gymnasium_make_refuses_an_impossible_tuple_stream_before_loading_data(
        tmp_path, no_data_loading):
    import gymnasium

    with pytest.raises(ValueError, match="at most 12,990 such tasks"):  # not "MNIST not found"
        gymnasium.make("clbench/TupleMNIST-v0", n_tasks=13000, data_root=tmp_path)


# ---------------------------------------------------------------- writes that fail: exit 1


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_earlier_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    Result(**make_result()).save(path)
    before = path.read_bytes()
    newer = make_result()
    newer["seed"] = 7
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError, match=f"cannot write {path} .No space left on device.; any "
                                      "earlier version of it is intact"):
        Result(**newer).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_a_disk_that_fills_mid_run_keeps_the_finished_tasks(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    real_fsync = os.fsync

    def fsync_then_full(fd):
        if out.exists() and load_result(out).n_tasks_done == 1:  # then the disk is full
            _enospc()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_full)
    assert run(*FAST_RUN, "--out", str(out)) == 1
    err = one_line(capsys)
    assert f"cannot write {out} (No space left on device); any earlier version of it is " \
           "intact" in err
    kept = load_result(out)
    assert kept.status == "running" and kept.n_tasks_done == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.ckpt"]
    assert sorted(p.name for p in folder_for(out).iterdir()) == [  # no temp file left
        "checkpoint.json", "state-000001.pt"]


def test_a_read_only_output_folder_fails_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    Result(**make_result()).save(out)
    before = out.read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(registry, "_load_cached", _no_data)  # refused before any work
    assert run(*FAST_RUN, "--out", str(out)) == 1
    assert f"cannot write results in {tmp_path}: Read-only file system" in one_line(capsys)
    assert out.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission_fails_in_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "r.json"
    Result(**make_result()).save(out)
    before = out.read_bytes()
    folder.chmod(0o555)
    try:
        assert run(*FAST_RUN, "--out", str(out)) == 1
        assert "Permission denied" in one_line(capsys)
        with pytest.raises(PermissionError):
            Result(**make_result()).save(out)
        assert out.read_bytes() == before
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------- file mode


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_result_files_get_the_users_normal_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = Result(**make_result()).save(tmp_path / "r.json")
        plain = tmp_path / "plain"
        plain.write_text("")  # what open() gives under this umask
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode == plain.stat().st_mode & 0o777
    assert os.umask(previous) == previous  # the umask is left as it was
