"""Agents that cheat (``tests/adversaries.py``) against the sealed harness.

In a sealed run each cheat either fails with a message naming the task and what went wrong,
or cannot do what it tries and scores exactly what honest ``naive`` scores. Each cheat is
also run unsealed (in process, where nothing is enforced) to show that it does work there:
the sealed tests cannot pass because a cheat was broken.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import adversaries
import pytest
import torch
from tiny_runs import SPLIT, TINY_STREAM

from clbench import costs
from clbench.harness import AgentError, evaluate
from clbench.results import validate_result
from clbench.sealed import counted, sandbox, seccomp
from clbench.tasks import Task, TaskSpec

ROOT = Path(__file__).resolve().parents[1]
SANDBOX, WHY_NOT = sandbox.bwrap_status()
needs_sandbox = pytest.mark.skipif(
    not SANDBOX, reason=f"the sandbox is what stops this cheat, and here {WHY_NOT}")
# Enough learning that naive's accuracy matrix is far from chance and below 1 (so "scores
# exactly as naive" and "scores 1.0" are telling), still a few seconds a run.
TRAINING = {"epochs": 2, "lr": 0.1}
STREAM = {**TINY_STREAM, "max_test_per_task": 40}


def run(agent, seal: bool = True, agent_kwargs=None, **options):
    """A run of ``agent`` on the tiny stream; a failed run's result instead of the error."""
    try:
        return evaluate(agent, SPLIT, seed=0, device="cpu", seal=seal, env_kwargs=STREAM,
                        agent_kwargs={**TRAINING, **(agent_kwargs or {})}, **options)
    except AgentError as error:
        return error.result


@pytest.fixture(scope="module")
def honest():
    """What naive scores on the same stream, seeds and settings."""
    result = run("naive")
    assert result.status == "complete", result.error
    assert 0.6 < result.metrics["acc"] < 1.0
    return result


def failed_on_task_0(result, stage: str, kind: str):
    assert result.status == "failed"
    assert result.failure["kind"] == kind and result.failure["task_id"] == 0
    assert f"failed in {stage} on task 0 (mnist5k:0|1)" in result.error
    validate_result(json.loads(json.dumps(result.to_dict())))  # its file is a valid result
    return result.error


# (a), (b), (i): reading test labels -------------------------------------------------------
LABEL_THIEVES = [adversaries.ReadsTestLabelsFromDataset, adversaries.WalksTheStackToTheEnv,
                 adversaries.ReadsTheHarnessThroughProc]


@pytest.mark.parametrize("thief", LABEL_THIEVES, ids=lambda cls: cls.__name__)
def test_unsealed_a_label_thief_scores_perfectly(thief):
    result = run(thief, seal=False, agent_kwargs={"harness_pid": os.getpid()}
                 if thief is adversaries.ReadsTheHarnessThroughProc else None)
    assert result.status == "complete" and result.metrics["acc"] == 1.0


@needs_sandbox
@pytest.mark.parametrize("thief", LABEL_THIEVES, ids=lambda cls: cls.__name__)
def test_sealed_a_label_thief_finds_no_labels_and_scores_as_naive(thief, honest):
    result = run(thief, agent_kwargs={"harness_pid": os.getpid()}
                 if thief is adversaries.ReadsTheHarnessThroughProc else None)
    assert result.status == "complete" and result.sealed
    assert result.accuracy == honest.accuracy


@needs_sandbox
def test_sealed_the_harness_process_is_out_of_sight():
    result = run(adversaries.ReadsTheHarnessThroughProc,
                 agent_kwargs={"harness_pid": os.getpid()})
    assert [m["harness_environ_readable"] for m in result.agent_metrics] == [False, False]
    unsealed = run(adversaries.ReadsTheHarnessThroughProc, seal=False,
                   agent_kwargs={"harness_pid": os.getpid()})
    assert [m["harness_environ_readable"] for m in unsealed.agent_metrics] == [True, True]


# (c) a disk cache ----------------------------------------------------------------------------
@pytest.fixture
def cache_name(monkeypatch, tmp_path):
    """A cache folder name of this test only, removed afterwards wherever it was written."""
    name = f"clbench-adversary-cache-{uuid.uuid4().hex}"
    yield name
    for folder in adversaries.cache_folders(name):
        shutil.rmtree(folder, ignore_errors=True)


def test_unsealed_a_disk_cache_hides_the_weights(cache_name, honest, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # not the user's own torch hub
    result = run(adversaries.CachesWeightsOnDisk, seal=False,
                 agent_kwargs={"cache_name": cache_name})
    assert result.status == "complete" and result.metrics["acc"] > 0.6  # it learned...
    assert max(result.storage_bytes) < 2_000 < min(honest.storage_bytes)  # ...keeping ~nothing


@needs_sandbox
def test_sealed_a_disk_cache_is_gone_by_the_next_call(cache_name):
    result = run(adversaries.CachesWeightsOnDisk, agent_kwargs={"cache_name": cache_name})
    error = failed_on_task_0(result, "predict", "agent_error")
    assert "FileNotFoundError: the disk cache is gone" in error
    assert not any(folder.exists() for folder in adversaries.cache_folders(cache_name))


# Caches no folder holds: each lives as long as its IPC namespace (the sandbox's), the
# sandbox's /tmp itself (its attributes) or, the keyring, as long as the user. The keyring
# takes the net only as root: other users may keep 20 kB there.
KERNEL_CACHES = [
    pytest.param(adversaries.CachesWeightsInSharedMemory, id="System V shared memory"),
    pytest.param(adversaries.CachesWeightsInSystemVMessages, id="System V message queues"),
    pytest.param(adversaries.CachesWeightsInAMessageQueue, id="POSIX message queues"),
    pytest.param(adversaries.CachesWeightsInTheKeyring, id="the user keyring"),
    pytest.param(adversaries.CachesWeightsInTempsAttributes, id="extended attributes of tmp"),
]


@pytest.fixture(params=KERNEL_CACHES)
def kernel_cache(request, cache_name):
    """(class, name) of a kernel cache of this test only, removed afterwards where the cheat
    left it."""
    yield request.param, cache_name
    request.param(cache_name=cache_name).remove()


def test_unsealed_a_kernel_cache_hides_the_weights(kernel_cache, honest):
    cheat, name = kernel_cache
    if cheat is adversaries.CachesWeightsInTheKeyring and os.geteuid() != 0:
        pytest.skip("only root may keep a whole net in the keyring (others: 20 kB)")
    if cheat is adversaries.CachesWeightsInTempsAttributes:
        probe = cheat(cache_name=name)
        fits = probe._put(f"{name}-probe", bytes(cheat.CHUNK))
        probe._drop(f"{name}-probe")
        if not fits:
            pytest.skip("this /tmp takes no 60 kB attribute (the sandbox's tmpfs does)")
    result = run(cheat, seal=False, agent_kwargs={"cache_name": name})
    assert result.status == "complete" and result.metrics["acc"] > 0.6
    assert max(result.storage_bytes) < 2_000 < min(honest.storage_bytes)


@needs_sandbox
def test_sealed_a_kernel_cache_is_gone_by_the_next_call(kernel_cache):
    cheat, name = kernel_cache
    result = run(cheat, agent_kwargs={"cache_name": name})
    error = failed_on_task_0(result, "predict", "agent_error")
    assert f"FileNotFoundError: the {cheat.WHERE} cache is gone" in error


def test_unsealed_printing_the_weights_to_a_stderr_file_keeps_them(cache_name, honest):
    if not stat.S_ISREG(os.fstat(2).st_mode):
        pytest.skip("stderr is not a file here (pytest -s?): the cheat reads its prints back "
                    "from the file")
    result = run(adversaries.ReadsItsPrintsBack, seal=False,
                 agent_kwargs={"cache_name": cache_name})
    assert result.status == "complete" and result.metrics["acc"] > 0.6
    assert max(result.storage_bytes) < 2_000 < min(honest.storage_bytes)


def test_sealed_a_worker_cannot_read_back_what_it_printed(cache_name):
    """Its prints reach the harness's stderr through a socket, never the file itself."""
    result = run(adversaries.ReadsItsPrintsBack, agent_kwargs={"cache_name": cache_name})
    error = failed_on_task_0(result, "predict", "agent_error")
    assert "FileNotFoundError: the printed cache is gone" in error


@needs_sandbox
def test_sealed_a_worker_cannot_read_the_harness_log_by_its_path(tmp_path):
    """A run whose stderr goes to a log in a folder the sandbox shows (here the agent's):
    the prints reach the log, and the next call finds the file hidden."""
    shutil.copy(adversaries.__file__, tmp_path / "cheat.py")
    log = tmp_path / "run.log"
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
              "from test_adversaries import run\n"
              f"result = run({str(tmp_path / 'cheat.py')!r} + ':ReadsItsPrintsBack', "
              f"agent_kwargs={{'cache_name': 'logged', 'log': {str(log)!r}}})\n"
              "print(result.status, result.error)\n")
    with open(log, "wb") as stderr:
        done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=stderr, text=True, cwd=ROOT, timeout=600, check=False)
    assert adversaries.ReadsItsPrintsBack.MARK + b"logged " in log.read_bytes()
    assert done.stdout.startswith("failed") and "the printed cache is gone" in done.stdout


@needs_sandbox
def test_sealed_a_temp_folder_made_unreadable_is_still_emptied(cache_name):
    """/tmp set to write and search only: the wipe could not list it, kept the cheat's
    net, and restored the mode; it now makes every kept folder readable first."""
    result = run(adversaries.LocksTheTempFolder, agent_kwargs={"cache_name": cache_name})
    error = failed_on_task_0(result, "predict", "agent_error")
    assert "FileNotFoundError: the locked cache is gone" in error


@needs_sandbox
def test_sealed_the_sandbox_init_keeps_nothing(cache_name, monkeypatch):
    """The zygote is the sandbox's PID 1 (``--as-pid-1``). With bwrap's reaper there, the
    cheat kept its net in the reaper's memory from one worker to the next."""
    without = tuple(option for option in sandbox.OPTIONS if option != "--as-pid-1")
    monkeypatch.setattr(sandbox, "OPTIONS", without)
    cheated = run(adversaries.CachesWeightsInTheSandboxInit,
                  agent_kwargs={"cache_name": cache_name})
    assert cheated.status == "complete" and max(cheated.storage_bytes) < 2_000
    monkeypatch.undo()
    result = run(adversaries.CachesWeightsInTheSandboxInit,
                 agent_kwargs={"cache_name": cache_name})
    error = failed_on_task_0(result, "predict", "agent_error")
    assert "FileNotFoundError: the sandbox init cache is gone" in error


def test_a_run_reads_its_own_test_accuracy_unsealed_but_not_sealed(tmp_path):
    """The result file is rewritten after every task; here it lies beside the agent's
    file, in a folder the sandbox binds in (a run's ``runs/`` folder is visible the same
    way), yet sealed workers see neither it nor its checkpoint."""
    shutil.copy(adversaries.__file__, tmp_path / "cheat.py")
    out = tmp_path / "r.json"
    agent = f"{tmp_path / 'cheat.py'}:ReadsItsOwnResultFile"
    unsealed = run(agent, seal=False, out=out, agent_kwargs={"watch": str(out)})
    assert [m["rows_seen"] for m in unsealed.agent_metrics] == [0, 1]  # then task 0's row
    assert all(m["checkpoint_listed"] for m in unsealed.agent_metrics)
    if not SANDBOX:
        pytest.skip(f"the sandbox hides the result file, and here {WHY_NOT}")
    sealed = run(agent, out=tmp_path / "sealed.json",
                 agent_kwargs={"watch": str(tmp_path / "sealed.json")})
    assert sealed.status == "complete" and sealed.sealed
    assert [m["rows_seen"] for m in sealed.agent_metrics] == [-1, -1]
    assert [m["checkpoint_listed"] for m in sealed.agent_metrics] == [False, False]
    assert (tmp_path / "cheat.py").exists()  # its own file still imported there


def test_the_timed_prediction_cannot_take_the_counted_passs_labels(cache_name, capfd):
    """Unsealed, the second pass of a counted prediction finds the first's labels in /tmp;
    sealed, the counted fork's /tmp is wiped before the timed pass runs."""
    unsealed = run(adversaries.PredictsFromTheCountedPass, seal=False,
                   agent_kwargs={"cache_name": cache_name})
    assert unsealed.status == "complete"
    assert adversaries.PredictsFromTheCountedPass.MARK in capfd.readouterr().err
    if not SANDBOX:
        pytest.skip(f"the sandbox wipes /tmp between the passes, and here {WHY_NOT}")
    sealed = run(adversaries.PredictsFromTheCountedPass, agent_kwargs={"cache_name": cache_name})
    assert sealed.status == "complete" and sealed.sealed
    assert adversaries.PredictsFromTheCountedPass.MARK not in capfd.readouterr().err


# (d) free replay from the dataset files ------------------------------------------------------
def test_unsealed_task_names_suffice_to_retrain_from_the_dataset_files():
    result = run(adversaries.RetrainsFromDatasetFiles, seal=False)
    assert result.status == "complete" and max(result.storage_bytes) < 2_000
    assert result.metrics["acc"] > 0.6


@needs_sandbox
def test_sealed_the_dataset_files_are_not_there():
    result = run(adversaries.RetrainsFromDatasetFiles)
    error = failed_on_task_0(result, "predict", "agent_error")
    assert "FileNotFoundError" in error and "mnist_5k.csv.gz" in error


# (e) weights in a module global until the last task ------------------------------------------
def test_unsealed_a_global_hides_the_weights_until_the_last_task(honest):
    result = run(adversaries.KeepsWeightsInAGlobal, seal=False)
    assert result.status == "complete" and result.accuracy == honest.accuracy
    assert result.storage_bytes[0] < 2_000 < result.storage_bytes[1]


@needs_sandbox
def test_sealed_a_global_is_empty_in_the_next_worker():
    result = run(adversaries.KeepsWeightsInAGlobal)
    error = failed_on_task_0(result, "load_state_dict", "agent_error")
    assert "the weights kept in the module global are gone" in error


# (f) a replay buffer in a class attribute, used only in learn ---------------------------------
def test_unsealed_without_replay_check_a_class_attribute_buffer_changes_learning(
        honest, monkeypatch):
    monkeypatch.setattr(adversaries.ReplaysFromAClassAttribute, "buffer", [])
    result = run(adversaries.ReplaysFromAClassAttribute, seal=False, flops=False)
    assert result.status == "complete" and result.accuracy != honest.accuracy
    assert result.storage_bytes == honest.storage_bytes  # the buffer is never counted


def test_unsealed_the_replay_check_catches_a_class_attribute_buffer(monkeypatch):
    monkeypatch.setattr(adversaries.ReplaysFromAClassAttribute, "buffer", [])
    error = failed_on_task_0(run(adversaries.ReplaysFromAClassAttribute, seal=False),
                             "learn (replay)", "irreproducible")
    assert "did not reproduce its state" in error


@needs_sandbox
def test_sealed_a_class_attribute_buffer_is_empty_in_every_worker(honest):
    result = run(adversaries.ReplaysFromAClassAttribute)
    assert result.status == "complete" and result.accuracy == honest.accuracy
    assert result.reproducible == [True, True]


# (g) FLOP dodging ----------------------------------------------------------------------------
@needs_sandbox
def test_sealed_a_dodger_of_the_second_learn_cannot_tell_it_apart(honest, monkeypatch):
    # a fresh worker per call remembers no earlier learn: every learn is done and counted
    result = run(adversaries.DodgesTheSecondLearn)
    assert result.status == "complete" and result.accuracy == honest.accuracy
    assert result.costs["learn_flops"] == honest.costs["learn_flops"]
    assert min(honest.costs["learn_flops"]) > 0


def test_unsealed_a_dodger_of_the_second_learn_fails_the_replay_check(monkeypatch):
    monkeypatch.setattr(adversaries, "_LEARNED", set())
    error = failed_on_task_0(run(adversaries.DodgesTheSecondLearn, seal=False),
                             "learn (replay)", "irreproducible")
    assert "state['net']" in error  # what differs is named


@pytest.mark.parametrize("seal", [pytest.param(True, marks=needs_sandbox), False])
def test_a_dodger_of_the_flop_counter_is_not_reproducible(seal):
    error = failed_on_task_0(run(adversaries.DodgesTheFlopCounter, seal=seal),
                             "learn (replay)", "irreproducible")
    assert "did not reproduce its state" in error


def test_the_flops_of_a_prediction_are_counted_apart_from_its_timed_pass(honest, monkeypatch):
    # one worker call answers both, yet each pass starts from the untouched worker: a
    # dodger of the second predict in a process labels and is counted as naive is
    result = run(adversaries.DodgesTheSecondPredict)
    assert result.status == "complete" and result.accuracy == honest.accuracy
    assert result.costs["predict_flops"] == honest.costs["predict_flops"]
    assert min(honest.costs["predict_flops"]) > 0
    monkeypatch.setattr(adversaries, "_PREDICTED", {})
    unsealed = run(adversaries.DodgesTheSecondPredict, seal=False)  # in one process it works
    assert unsealed.costs["predict_flops"][0] == 0 < honest.costs["predict_flops"][0]


@pytest.mark.parametrize("seal", [True, False])  # a worker, sandboxed or not; in process
@pytest.mark.parametrize(("cheat", "stage", "training"), [
    # every epoch of 100, none stopped early: about 0.4 s on an idle 2-core machine, well
    # above the 0.11 s counted.uncounted_limit allows (early stopping ended it at 0.08 s)
    (adversaries.TrainsInAThread, "learn (replay)", {"epochs": 100, "holdout_fraction": 0}),
    (adversaries.PredictsInAThread, "predict (FLOP count)", {"epochs": 2})])
def test_work_in_other_threads_fails_the_run(cheat, stage, training, seal):
    # the counter is torch's dispatch mode, which is thread-local: such work would go uncounted
    result = run(cheat, seal=seal, agent_kwargs=training)
    error = failed_on_task_0(result, stage, "uncounted_work")
    assert "outside the thread the FLOP counter watches" in error and "--no-flops" in error


def test_a_counted_call_in_a_worker_cannot_start_processes():
    result = run(adversaries.WorksInAChildProcess)
    error = failed_on_task_0(result, "learn (replay)", "uncounted_work")
    assert "may not start processes" in error and "--no-flops" in error
    assert run(adversaries.WorksInAChildProcess, flops=False).status == "complete"


def _clone_a_sibling() -> None:
    """clone(2) called directly, with CLONE_PARENT: a process beside this one, not below it
    (an adversarial review's way past accounting by descendants)."""
    libc = ctypes.CDLL(None, use_errno=True)
    number = {"x86_64": 56, "aarch64": 220}[platform.machine()]
    pid = libc.syscall(number, 0x8000 | signal.SIGCHLD, 0, 0, 0, 0)  # CLONE_PARENT
    if pid == 0:
        os._exit(0)
    if pid < 0:
        raise PermissionError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@pytest.mark.skipif(seccomp.program({}) is None,
                    reason="the seccomp filter exists for Linux on x86_64 and aarch64 only")
def test_the_filter_refuses_every_way_to_a_process_and_keeps_threads():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the filter lasts for the process: only ever in a child
        torch.set_num_threads(1)  # no OpenMP team in a forked child
        outcomes = [counted.refuse_new_processes()]
        thread = threading.Thread(target=lambda: outcomes.append("thread"))
        thread.start()
        thread.join()
        for attempt in (os.fork, lambda: subprocess.run(["true"], check=False),
                        lambda: os.posix_spawn("/bin/true", ["true"], {}), _clone_a_sibling):
            try:
                attempt()
                outcomes.append("started")
            except PermissionError:
                outcomes.append("refused")
        outcomes.append(float(torch.ones(300, 300).matmul(torch.ones(300, 300)).sum()))
        os.write(write, repr(outcomes).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as stream:
        outcomes = stream.read()
    os.waitpid(pid, 0)
    assert outcomes == repr([True, "thread", *["refused"] * 4, 300.0 ** 3])


@pytest.mark.parametrize("seal", [True, False])  # a worker, sandboxed or not; in process
def test_a_prediction_that_changes_when_counted_fails_the_run(seal):
    error = failed_on_task_0(run(adversaries.PredictsCheaplyWhenCounted, seal=seal),
                             "predict (FLOP count)", "irreproducible")
    assert "labelled the queries differently" in error


def test_a_thread_of_its_own_escapes_the_counter_itself():
    # what the check above stops: the state is learned, and the counter sees no FLOPs
    agent = adversaries.TrainsInAThread(device="cpu", **TRAINING)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    task = Task(0, TaskSpec.from_name("mnist5k:0|1"), images, torch.randint(0, 2, (64,)))
    assert costs.count_flops(lambda: agent.learn(task)) == 0
    assert agent.state_dict()["net"]  # it did learn


def test_without_flops_nothing_is_counted_so_nothing_is_checked():
    result = run(adversaries.TrainsInAThread, flops=False)
    assert result.status == "complete" and result.costs["learn_flops"] == [None, None]


# (h) the network -----------------------------------------------------------------------------
def _registry_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=3):
            return True
    except OSError:
        return False


@needs_sandbox
def test_sealed_there_is_no_network():
    result = run(adversaries.ReachesTheNetwork)
    assert result.status == "complete"
    assert all(m["network"].startswith("blocked: ") for m in result.agent_metrics)


def test_unsealed_the_network_is_reached():
    if not _registry_reachable():
        pytest.skip("this machine cannot reach pypi.org itself, so there is no control")
    result = run(adversaries.ReachesTheNetwork, seal=False)
    assert [m["network"] for m in result.agent_metrics] == ["reached pypi.org:443"] * 2


# (j) the costs a worker reports -----------------------------------------------------------
@pytest.mark.parametrize(("cheat", "kwargs", "flops", "stage"), [
    (adversaries.StopsItsClock, {"where": "learn"}, False, "learn"),
    (adversaries.StopsItsClock, {"where": "predict"}, True, "predict"),
    (adversaries.TrainsInStateDict, {}, False, "learn")], ids=["clock-learn", "clock-predict",
                                                              "state_dict"])
def test_seconds_the_kernel_cannot_account_for_fail_the_run(cheat, kwargs, flops, stage):
    """A worker's seconds are measured in its own process, where the agent's code can stop
    the clock, or do its work where no clock runs; the zygote's count of the worker's CPU
    (with that of the fork counting a prediction's FLOPs taken out) bounds them."""
    result = run(cheat, agent_kwargs=kwargs, flops=flops)
    error = failed_on_task_0(result, stage, "implausible_cost")
    assert "s of CPU" in error and "changed how it is timed" in error


def test_the_same_work_timed_honestly_passes_the_check():
    """The cheats' honest twin: the same second of CPU per prediction, clock running, FLOPs
    counted (so the counted fork's CPU, taken out, is a second as well)."""
    result = run(adversaries.StopsItsClock,
                 agent_kwargs={"where": "predict", "busy": 1.0, "stop": False})
    assert result.status == "complete", result.error
    assert min(result.costs["predict_seconds"]) >= 1.0 / os.cpu_count()


def test_the_fork_counting_a_prediction_cannot_answer_for_the_worker():
    """The fork that counts a prediction's FLOPs held the channel to the harness and could
    answer first, for the worker (1e-6 s, its own labels, any untimed CPU). It closes the
    channel before the agent's code runs; what it sends on the socket it keeps, for its own
    reply, is malformed there and fails the run."""
    result = run(adversaries.AnswersForTheTimedPass)
    assert result.costs["predict_seconds"][:1] != [1e-6]
    failed_on_task_0(result, "predict (FLOP count)", "protocol")


@pytest.mark.parametrize("raw", [False, pytest.param(True, marks=pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the raw system call is written for x86_64"))],
    ids=["signal", "raw-high-pointer"])
def test_work_in_a_child_the_kernel_reaps_fails_the_run(raw):
    """With SIGCHLD ignored the kernel reaps a child itself and its CPU reaches no count,
    the zygote's included: setting SIGCHLD's action is refused to every worker, whatever
    the address of the new action (a review passed one whose low 32 bits were 0)."""
    result = run(adversaries.HidesWorkInAnIgnoredChild, flops=False, agent_kwargs={"raw": raw})
    error = failed_on_task_0(result, "learn", "agent_error")
    assert "Operation not permitted" in error


AGENT_BESIDE_A_SHADOW = """
import os
from baselines.naive import Naive
{imports}

class Probe(Naive):
    def metrics(self):
        return {{"shadow_ran_in": os.environ.get("CLBENCH_TEST_SHADOW")}}
"""


@pytest.mark.skipif(importlib.util.find_spec("opt_einsum") is not None,
                    reason="opt_einsum is installed, so torch's import of it finds no shadow")
def test_a_file_beside_the_agent_never_runs_in_the_zygote(tmp_path):
    """torch tries optional imports (opt_einsum, ...) when the zygote imports it; with the
    agent's folder on the zygote's path, a file of that name beside the agent ran there,
    in the process every later worker is forked from (a thread it left could work for them,
    unseen by the CPU count, and keep data between calls)."""
    (tmp_path / "agent.py").write_text(AGENT_BESIDE_A_SHADOW.format(imports=""))
    (tmp_path / "opt_einsum.py").write_text(
        "import os\nos.environ['CLBENCH_TEST_SHADOW'] = str(os.getpid())\n"
        "raise ImportError('a shadow')\n")
    result = run(f"{tmp_path / 'agent.py'}:Probe", flops=False)
    assert result.status == "complete", result.error
    assert result.agent_metrics[0]["shadow_ran_in"] is None


def test_an_agent_importing_a_heavy_library_passes_the_cost_check(tmp_path):
    """scikit-learn takes about 2 s of CPU to import, in every fresh worker (with scipy):
    the modules an agent's file imports from the environment are imported before its code
    runs, and their CPU is not held against its seconds."""
    (tmp_path / "agent.py").write_text(
        AGENT_BESIDE_A_SHADOW.format(imports="import sklearn.metrics"))
    result = evaluate(f"{tmp_path / 'agent.py'}:Probe", SPLIT, seed=0, device="cpu",
                      env_kwargs={**STREAM, "n_tasks": 1}, agent_kwargs=TRAINING, flops=False)
    assert result.status == "complete", result.error


def test_the_timed_pass_cannot_read_the_counted_pass_usage(capfd):
    """The process counting a prediction's FLOPs is reaped by the zygote, not the worker:
    the worker's children's usage, which its timed pass reads, holds none of that pass's
    page faults (a review sent a small query set's labels through them)."""
    result = run(adversaries.ReadsTheCountedPassUsage)
    assert result.status == "complete", result.error
    seen = [int(line.rpartition(" ")[2]) for line in capfd.readouterr().err.splitlines()
            if line.startswith("counted pass's page faults seen:")]
    assert seen and max(seen) < 5_000, seen


def test_the_counted_pass_shares_no_file_with_the_timed_pass(capfd):
    """The counting process opens files of its own for stdin, stdout and stderr: options set
    on the worker's prints socket reached the timed pass (60 bits a call in a review)."""
    result = run(adversaries.SetsOptionsOnItsPrints)
    assert result.status == "complete", result.error
    seen = [line for line in capfd.readouterr().err.splitlines()
            if line.startswith("option seen:")]
    assert seen and "123457" not in "".join(seen), seen


def test_a_counted_pass_that_runs_on_cannot_keep_the_zygote_waiting(tmp_path):
    """A counting process that closed its end-of-pass pipe early and ran on kept the
    zygote in wait4 for good, past the harness's stop and death: it is killed instead."""
    script = tmp_path / "keeps_waiting.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nimport adversaries\n"
        "from test_adversaries import run\n"
        "result = run(adversaries.KeepsTheZygoteWaiting)\n"
        "print(result.status, result.failure['kind'], result.failure['stage'])\n")
    done = subprocess.run([sys.executable, str(script), str(ROOT / "tests")],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "failed worker_died predict (FLOP count)", done.stderr
