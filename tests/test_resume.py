"""Resume: a run killed at any moment continues from its last finished task, and ends with
the accuracy matrix and state bytes of a run that was never interrupted (bitwise, on CPU).

Failures injected here: SIGKILL of ``clbench run`` inside a learn, inside its replay, inside
an evaluation and at a random instant (sealed workers, a real process tree); a kill before
every single write the harness makes (in-process, every instant between two writes); a
state file altered on disk; a result without checkpoint; no result; a resume with each
identity field changed; a complete run resumed; a second run of a result file in use.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import pytest
import torch
from agents_for_tests import ConstantZero

import clbench
from clbench import checkpoint as checkpoint_module
from clbench import harness
from clbench import results as results_module
from clbench.checkpoint import Checkpoint, RunInProgress, folder_for, hold, lock_for
from clbench.cli import main
from clbench.harness import AgentError, evaluate
from clbench.results import load_result

AGENT = f"{Path(__file__).with_name('agents_for_tests.py')}:Announces"
SPLIT = "clbench/SplitMNIST5k-v0"
STREAM = {"n_tasks": 3, "max_train_per_task": 100, "max_test_per_task": 40}
AGENT_KWARGS = {"epochs": 1, "lr": 0.05}
RUN = ["run", "--env", SPLIT, "--agent", AGENT, "--device", "cpu", "--quiet",
       *(f"--agent-arg={k}={v}" for k, v in AGENT_KWARGS.items()),
       *(f"--env-arg={k}={v}" for k, v in STREAM.items())]
SESSION_TIMEOUT = 300


# ---------------------------------------------------------------- SIGKILL of `clbench run`
def _session(out: Path, *options: str, kill_after: tuple[str, ...] = (),
             kill_delay: float | None = None) -> tuple[int, list[str]]:
    """One ``clbench run`` session; SIGKILL once the agent has announced every line of
    ``kill_after`` in order (it pauses after each announcement, so the kill lands inside
    that call), or ``kill_delay`` seconds after the first announcement. Returns the exit
    code (-9 when killed) and the announcements seen."""
    process = subprocess.Popen([sys.executable, "-m", "clbench", *RUN, "--out", str(out),
                                *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    seen, waiting, started = [], list(kill_after), None
    try:
        for line in process.stderr:
            if not line.startswith("clbench-test: "):
                continue
            seen.append(line.removeprefix("clbench-test: ").strip())
            if waiting and seen[-1] == waiting[0]:
                waiting.pop(0)
                if not waiting:
                    process.send_signal(signal.SIGKILL)
                    break
            if kill_delay is not None:
                started = started or time.monotonic()
                if time.monotonic() - started >= kill_delay:
                    process.send_signal(signal.SIGKILL)
                    break
        process.wait(timeout=SESSION_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    return process.returncode, seen


def _finished(out: Path) -> int:
    """Finished tasks of a killed run, after checking its files agree."""
    result = load_result(out)
    assert result.status == "running"
    listed = json.loads((folder_for(out) / "checkpoint.json").read_text())["states"]
    assert result.n_tasks_done in [entry["tasks_done"] for entry in listed]
    return result.n_tasks_done


def _same_run(resumed: Path, reference: Path) -> None:
    got, want = load_result(resumed), load_result(reference)
    assert got.status == "complete"
    assert got.accuracy == want.accuracy  # JSON floats: bitwise equal
    assert got.storage == want.storage
    assert got.agent_metrics == want.agent_metrics and got.metrics == want.metrics
    assert not folder_for(resumed).exists()


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kills in a learn, in an evaluation and at a random instant, then --resume until
    complete; a second run is killed in the replay of a learn (FLOPs on) and resumed."""
    seed = random.randrange(2**32)
    draw = random.Random(seed)
    reference = tmp_path / "reference.json"
    assert _session(reference, "--no-flops")[0] == 0

    out = tmp_path / "killed.json"
    in_learn = draw.randrange(1, 3)
    code, seen = _session(out, "--no-flops", kill_after=(f"learn {in_learn}",))
    assert code == -signal.SIGKILL and seen[-1] == f"learn {in_learn}", (seed, seen)
    assert _finished(out) == in_learn, seed

    in_evaluation = draw.randrange(in_learn, STREAM["n_tasks"])
    code, seen = _session(out, "--no-flops", "--resume",
                          kill_after=(f"learn {in_evaluation}", "predict 0"))
    assert code == -signal.SIGKILL and seen[0] == f"learn {in_learn}", (seed, seen)
    assert _finished(out) == in_evaluation, seed  # its own task was not scored yet

    sessions = 0
    while load_result(out).status != "complete":  # a random instant, then to the end
        delay = draw.uniform(0.0, 3.0) if sessions == 0 else None
        code, seen = _session(out, "--no-flops", "--resume", kill_delay=delay)
        assert code in (0, -signal.SIGKILL), (seed, code, seen)
        assert load_result(out).status in ("running", "complete"), seed
        sessions += 1
        assert sessions <= 3, seed
    _same_run(out, reference)
    assert load_result(out).isolation["resumed_after_tasks"][:2] == [in_learn, in_evaluation]

    flops = tmp_path / "flops.json"
    code, seen = _session(flops, kill_after=("learn 1", "learn 1"))  # the replay of task 1
    assert code == -signal.SIGKILL and _finished(flops) == 1, seen
    assert _session(flops, "--resume")[0] == 0
    _same_run(flops, reference)  # FLOPs only add a replay: the same states and answers
    assert load_result(flops).reproducible == [True] * STREAM["n_tasks"]


# ---------------------------------------------------------------- a kill before every write
FAST_STREAM = {"n_tasks": 3, "max_train_per_task": 40, "max_test_per_task": 10}
FAST = {"env_kwargs": FAST_STREAM, "agent_kwargs": {"epochs": 1, "lr": 0.05},
        "device": "cpu", "flops": False, "seal": False}
CENTROIDS = f"{Path(__file__).with_name('agents_for_tests.py')}:Centroids"
CHEAP = {**FAST, "agent_kwargs": {}}


class Killed(BaseException):
    """Stands for SIGKILL: nothing of the harness runs after it (no handler catches it)."""


def _instrument(monkeypatch, kill_at: int | None) -> list[str]:
    """Count every write the harness makes (result, state file, checkpoint index, pruning,
    removal); raise :class:`Killed` instead of the ``kill_at``-th (1-based)."""
    calls: list[str] = []

    def wrap(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            calls.append(f"{getattr(owner, '__name__', owner)}.{name}")
            if len(calls) == kill_at:
                raise Killed
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)

    for owner, name in ((results_module, "write_json_atomic"),
                        (checkpoint_module, "write_bytes_atomic"),
                        (checkpoint_module, "write_json_atomic"),
                        (Checkpoint, "prune"), (Checkpoint, "remove")):
        wrap(owner, name)
    return calls


def test_a_kill_before_any_write_loses_nothing_and_resumes_bitwise(tmp_path, monkeypatch):
    """In-process and exhaustive: for every write of a 3-task run, a run killed just before
    it resumes (resume='auto': starts afresh where no result was written yet) to the
    uninterrupted run's result, and leaves no checkpoint."""
    reference = evaluate(CENTROIDS, SPLIT, out=tmp_path / "reference.json", **CHEAP)
    assert 0.5 < reference.metrics["acc"] < 1.0
    with monkeypatch.context() as patch:
        writes = _instrument(patch, None)
        evaluate(CENTROIDS, SPLIT, out=tmp_path / "counted.json", **CHEAP)
    assert len(writes) > 3 * FAST_STREAM["n_tasks"]
    for kill_at in range(1, len(writes) + 1):
        out = tmp_path / f"killed{kill_at}.json"
        with monkeypatch.context() as patch:
            _instrument(patch, kill_at)
            with pytest.raises(Killed):
                evaluate(CENTROIDS, SPLIT, out=out, **CHEAP)
        if out.exists():
            assert load_result(out).status in ("running", "complete")
        resumed = evaluate(CENTROIDS, SPLIT, out=out, resume="auto", **CHEAP)
        assert resumed.accuracy == reference.accuracy, writes[kill_at - 1]
        assert resumed.storage == reference.storage, writes[kill_at - 1]
        assert load_result(out).accuracy == reference.accuracy
        assert not folder_for(out).exists(), writes[kill_at - 1]


# ---------------------------------------------------------------- one run per result file
ZERO = f"{Path(__file__).with_name('agents_for_tests.py')}:ConstantZero"


class SecondRun(ConstantZero):
    """Keeps nothing, answers 0; in its first learn it starts another run of the result file
    it is being run into (:attr:`out`) every way a user could, and records what happened."""

    out: Path
    attempts: list[str] = []

    def learn(self, task):
        if task.id == 0:
            for resume in (False, True, "auto"):
                try:
                    evaluate(ZERO, SPLIT, device="cpu", env_kwargs=FAST_STREAM, out=self.out,
                             resume=resume, flops=False, seal=False)
                    SecondRun.attempts.append(f"resume={resume}: ran")
                except RunInProgress as refused:
                    SecondRun.attempts.append(str(refused))


def test_a_second_run_of_a_result_file_in_use_is_refused_before_it_touches_it(tmp_path,
                                                                              monkeypatch):
    """Two sweeps on one results folder, or two ``clbench run --out`` of one file: without
    the lock the second rewrote the result and wiped the first's checkpoint mid-run."""
    out = tmp_path / "run.json"
    monkeypatch.setattr(SecondRun, "out", out, raising=False)
    monkeypatch.setattr(SecondRun, "attempts", [])
    result = evaluate(SecondRun, SPLIT, device="cpu", env_kwargs=FAST_STREAM, out=out,
                      flops=False, seal=False)
    assert len(SecondRun.attempts) == 3
    for attempt in SecondRun.attempts:  # flock: a second open file in one process conflicts
        assert attempt.startswith(f"{out} is being written by another run (process "
                                  f"{os.getpid()} on "), attempt
    assert result.status == "complete" and load_result(out).n_tasks_done == 3
    assert sorted(tmp_path.iterdir()) == [out]  # lock, checkpoint and temp files gone


def test_a_run_held_elsewhere_is_refused_and_a_killed_holder_blocks_nothing(tmp_path, capsys,
                                                                            hold_elsewhere):
    out = tmp_path / "run.json"
    holder = hold_elsewhere(out)
    folder_for(out).mkdir()  # the holder's checkpoint, as a live run has one
    (folder_for(out) / "checkpoint.json").write_text("{}")
    assert main([*RUN, "--out", str(out), "--no-flops"]) == 1
    said = capsys.readouterr().err
    assert f"{out} is being written by another run (process {holder.pid} on " in said, said
    assert "starting afresh" not in said  # nothing said about the other run's files
    assert sorted(tmp_path.iterdir()) == [lock_for(out), folder_for(out)]
    assert (folder_for(out) / "checkpoint.json").read_text() == "{}"
    holder.kill()  # SIGKILL: no handler runs, the kernel drops the lock
    holder.wait()
    with hold(out):
        assert f"process {os.getpid()} on " in lock_for(out).read_text()
    assert not lock_for(out).exists()


def test_a_lock_file_removed_under_a_live_run_is_not_removed_again_by_it(tmp_path):
    """Someone deletes A's lock file (``git clean -X``, say) and B takes a new one: A must not
    then remove B's on leaving, or C would run beside B."""
    out = tmp_path / "run.json"
    first, second = hold(out), hold(out)  # two open files: flock sets them against each other
    first.__enter__()
    lock_for(out).unlink()
    second.__enter__()
    first.__exit__(None, None, None)
    assert lock_for(out).exists()
    with pytest.raises(RunInProgress), hold(out):
        pass
    second.__exit__(None, None, None)
    assert not lock_for(out).exists()


def test_another_users_lock_file_is_locked_read_only(tmp_path, monkeypatch):
    out = tmp_path / "run.json"
    lock_for(out).write_text("process 1 on elsewhere\n")
    opened = os.open

    def not_for_writing(path, flags, *mode):
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, flags, *mode)

    monkeypatch.setattr(checkpoint_module.os, "open", not_for_writing)
    with hold(out):
        assert lock_for(out).read_text() == "process 1 on elsewhere\n"
        with pytest.raises(RunInProgress, match="process 1 on elsewhere"), hold(out):
            pass


FORKING_HOLDER = """import os, sys, time
from clbench.checkpoint import hold
with hold(sys.argv[1]):
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)
    time.sleep(600)
"""


def test_a_lock_kept_by_a_fork_of_a_killed_run_is_named_as_such(tmp_path):
    out = tmp_path / "run.json"
    holder = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(out)],
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        with pytest.raises(RunInProgress) as refused, hold(out):
            pass
        assert f"Process {holder.pid} has exited, so a process it forked still holds the " \
               f"lock: `fuser {lock_for(out)}` names it" in str(refused.value)
    finally:
        holder.stdout.close()
        os.kill(child, signal.SIGKILL)


# ---------------------------------------------------------------- refusals
@pytest.fixture
def failed_run(tmp_path, monkeypatch):
    return _fail_in_task_1(tmp_path / "run.json", monkeypatch)


def _fail_in_task_1(out: Path, monkeypatch, **options) -> Path:
    """A run that failed in task 1's learn (its checkpoint kept), unsealed for speed."""
    from baselines.naive import Naive

    learn = Naive.learn

    def fails_on_task_1(self, task):
        if task.id == 1:
            raise RuntimeError("out of memory, say")
        return learn(self, task)

    with monkeypatch.context() as patch:
        patch.setattr(Naive, "learn", fails_on_task_1)
        with pytest.raises(AgentError):
            evaluate("naive", SPLIT, out=out, **FAST, **options)
    assert load_result(out).status == "failed" and folder_for(out).is_dir()
    return out


def _cli(out: Path, *changes: str) -> list[str]:
    return ["run", "--env", SPLIT, "--agent", "naive", "--device", "cpu", "--quiet",
            "--no-seal", "--no-flops", "--agent-arg", "epochs=1", "--agent-arg", "lr=0.05",
            *(f"--env-arg={k}={v}" for k, v in FAST_STREAM.items()), "--out", str(out),
            "--resume", *changes]


@pytest.mark.parametrize(("changes", "field"), [
    (["--env", "clbench/OneVsRestMNIST5k-v0"], "env.id: 'clbench/SplitMNIST5k-v0'"),
    (["--env-arg", "positive_fraction=0.4"], "env.kwargs.positive_fraction: not given"),
    (["--agent", "ewc"], "agent.name: 'naive' (checkpoint) vs 'ewc' (this run)"),
    (["--agent-arg", "epochs=2"], "agent.kwargs.epochs: 1 (checkpoint) vs 2 (this run)"),
    (["--seed", "1"], "seed: 0 (checkpoint) vs 1 (this run)"),
    ([], "flops: False (checkpoint) vs True (this run)"),
    ([], "seal: False (checkpoint) vs True (this run)"),
    (["--eval-every", "2"], "eval_every: 1 (checkpoint) vs 2 (this run)"),
], ids=["env", "env-kwarg", "agent", "agent-arg", "seed", "flops", "seal", "eval-every"])
def test_resume_refuses_a_different_run_naming_the_field(failed_run, capsys, changes, field):
    before = failed_run.read_bytes()
    argv = _cli(failed_run, *changes)
    if field.startswith("flops"):
        argv.remove("--no-flops")
    if field.startswith("seal"):
        argv = [a for a in argv if a != "--no-seal"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and field in error and "cannot resume" in error, error
    assert failed_run.read_bytes() == before


def test_resume_refuses_another_clbench_version(failed_run, capsys, monkeypatch):
    monkeypatch.setattr(clbench, "__version__", "9.9.9")
    assert main(_cli(failed_run)) == 2
    assert "versions.clbench: '0.1.0' (checkpoint) vs '9.9.9' (this run)" in capsys.readouterr().err


def test_a_failed_run_resumes_from_its_last_finished_task(failed_run, monkeypatch):
    """... on another machine, as a run resumed in another session may: the file names the
    machine of each session, from the task where it began."""
    uninterrupted = evaluate("naive", SPLIT, out=failed_run.with_name("plain.json"), **FAST)
    here = {"cpu": harness.cpu_model(), "cores": harness.usable_cores(), "gpu": None}
    assert uninterrupted.hosts == [{"first_task": 0, **here}]
    monkeypatch.setattr(harness, "cpu_model", lambda: "Another CPU")
    resumed = evaluate("naive", SPLIT, out=failed_run, resume=True, **FAST)
    assert resumed.status == "complete" and resumed.failure is None and resumed.error is None
    assert resumed.accuracy == uninterrupted.accuracy
    assert resumed.storage == uninterrupted.storage
    assert resumed.isolation["resumed_after_tasks"] == [1]
    assert resumed.wall_seconds > 0
    assert load_result(failed_run).hosts == [{"first_task": 0, **here},
                                             {"first_task": 1, **here, "cpu": "Another CPU"}]


def test_a_sparse_run_resumes_with_its_own_schedule_only(tmp_path, monkeypatch, capsys):
    out = _fail_in_task_1(tmp_path / "sparse.json", monkeypatch, eval_every=2)
    assert main(_cli(out)) == 2
    assert "eval_every: 2 (checkpoint) vs 1 (this run)" in capsys.readouterr().err
    resumed = evaluate("naive", SPLIT, out=out, resume=True, eval_every=2, **FAST)
    uninterrupted = evaluate("naive", SPLIT, eval_every=2, **FAST)
    assert resumed.accuracy == uninterrupted.accuracy and resumed.eval_every == 2
    assert resumed.eval_note == uninterrupted.eval_note is not None


def test_a_checkpoint_from_before_eval_every_resumes_as_the_full_matrix(failed_run):
    index = folder_for(failed_run) / "checkpoint.json"
    for path, key in ((index, "identity"), (failed_run, None)):
        data = json.loads(path.read_text())
        (data[key] if key else data).pop("eval_every")
        path.write_text(json.dumps(data))
    resumed = evaluate("naive", SPLIT, out=failed_run, resume=True, **FAST)
    assert resumed.status == "complete" and resumed.eval_every == 1


def test_an_altered_state_file_is_refused(failed_run, capsys):
    state = next(folder_for(failed_run).glob("state-*.pt"))
    altered = bytearray(state.read_bytes())
    altered[len(altered) // 2] ^= 1
    state.write_bytes(bytes(altered))
    assert main(_cli(failed_run)) == 2
    assert "is not the one recorded (SHA-256" in capsys.readouterr().err


def test_nothing_to_resume_is_refused_clearly(tmp_path, failed_run, capsys):
    missing = tmp_path / "missing.json"
    assert main(_cli(missing)) == 2
    assert f"nothing to resume: there is no result file {missing}" in capsys.readouterr().err
    Checkpoint(folder_for(failed_run), {}, {}).remove()
    assert main(_cli(failed_run)) == 2
    error = capsys.readouterr().err
    assert "(failed, 1 of 3 tasks finished): it has no checkpoint" in error, error
    assert "run without --resume to start afresh" in error


def test_resume_auto_starts_afresh_where_there_is_nothing_to_resume(tmp_path, failed_run):
    """What a sweep passes: resume where it can, else start afresh (no file, a malformed
    one, another run's checkpoint)."""
    malformed = tmp_path / "malformed.json"
    malformed.write_text("{")
    for out, seed in ((tmp_path / "new.json", 0), (malformed, 0), (failed_run, 1)):
        result = evaluate(CENTROIDS, SPLIT, out=out, resume="auto", seed=seed, **CHEAP)
        assert result.status == "complete" and "resumed_after_tasks" not in result.isolation
    with pytest.raises(ValueError, match="resume needs out="):
        evaluate("naive", SPLIT, resume=True, **FAST)


def test_a_complete_run_is_left_as_it_is(tmp_path, capsys):
    out = tmp_path / "done.json"
    argv = _cli(out)
    argv.remove("--resume")
    assert main(argv) == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert main(_cli(out)) == 0
    assert "was already complete; nothing was run" in capsys.readouterr().err
    assert out.read_bytes() == before and not folder_for(out).exists()
    assert main(_cli(out, "--seed", "3")) == 2
    assert "complete run that differs in seed: 0 (result) vs 3 (this run)" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoint_files_get_the_users_normal_mode(tmp_path, monkeypatch, umask, mode):
    previous = os.umask(umask)
    try:
        out = _fail_in_task_1(tmp_path / "run.json", monkeypatch)
    finally:
        os.umask(previous)
    files = [out, folder_for(out) / "checkpoint.json", *folder_for(out).glob("state-*.pt")]
    assert len(files) == 3
    for path in files:
        assert path.stat().st_mode & 0o777 == mode, path


# ---------------------------------------------------------------- the env's start
@pytest.mark.parametrize("kwargs", [{}, {"query_future": True}, {"scenario": "domain"},
                                    {"stream": "tuples", "n_tasks": 4}])
def test_an_episode_started_at_a_task_is_the_one_reached_by_stepping(kwargs):
    """reset(options={"start_task": k}) gives the observation and info that k steps give."""
    make = {"max_train_per_task": 30, "max_test_per_task": 10, "n_tasks": 4, **kwargs,
            "backend": "torch"}
    walked = gymnasium.make("clbench/SplitMNIST5k-v0", **make, disable_env_checker=True)
    jumped = gymnasium.make("clbench/SplitMNIST5k-v0", **make, disable_env_checker=True)
    obs, info = walked.reset(seed=7)
    for start in range(1, 4):
        obs, _, _, _, info = walked.step(torch.zeros(len(obs["query_task_ids"]),
                                                      dtype=torch.int64))
        got, got_info = jumped.reset(seed=7, options={"start_task": start})
        for key in obs:
            assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(obs[key])), key
        for key in ("task_name", "task_names", "input_shapes", "n_queries"):
            assert got_info[key] == info[key]
        for name in ("x_train", "y_train"):
            assert torch.equal(getattr(got_info["task"], name), getattr(info["task"], name))
        assert (got_info["task"].id, got_info["task"].spec) == (info["task"].id,
                                                                info["task"].spec)
    with pytest.raises(ValueError, match="start_task=4: give a task id from 0 to 3"):
        jumped.reset(seed=7, options={"start_task": 4})
    with pytest.raises(ValueError, match="the only option is 'start_task'"):
        jumped.reset(seed=7, options={"start": 1})


def test_a_fresh_run_over_an_unfinished_one_says_so_and_replaces_it(failed_run, capsys):
    argv = _cli(failed_run)
    argv.remove("--resume")
    assert main(argv) == 0
    assert "starting afresh over the unfinished run" in capsys.readouterr().err
    assert load_result(failed_run).status == "complete" and not folder_for(failed_run).exists()


@pytest.mark.parametrize("index", [b"\xff\xfe", b"{}", b'{"schema": "clbench.checkpoint/1"}',
                                   b"[" * 100000])
def test_a_malformed_checkpoint_is_refused_in_one_line(failed_run, capsys, index):
    (folder_for(failed_run) / "checkpoint.json").write_bytes(index)
    assert main(_cli(failed_run)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is unreadable or malformed" in error, error


def test_a_state_entry_naming_another_file_is_refused(failed_run, capsys):
    index = folder_for(failed_run) / "checkpoint.json"
    data = json.loads(index.read_text())
    data["states"][-1]["file"] = "../run.json"
    index.write_text(json.dumps(data))
    assert main(_cli(failed_run)) == 2
    assert "state file name '../run.json'" in capsys.readouterr().err
