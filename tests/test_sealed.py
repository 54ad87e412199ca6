"""Sealed workers: the channel, the import path, the sandbox, reproducibility, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from clbench.harness import AgentError, evaluate
from clbench.results import load_result
from clbench.sealed.sandbox import bwrap_status, hide_outputs

SPLIT = "clbench/SplitMNIST5k-v0"
TINY = {"max_train_per_task": 100, "max_test_per_task": 40, "n_tasks": 2}
AGENTS = str(Path(__file__).with_name("sealed_agents.py"))
needs_bwrap = pytest.mark.skipif(not bwrap_status()[0], reason=(
    f"the sandbox cannot be tested here: {bwrap_status()[1]}"))


def run_tiny(agent: str, **options):
    return evaluate(f"sealed_agents:{agent}", SPLIT, device="cpu", env_kwargs=TINY, **options)


def test_prints_anywhere_do_not_touch_the_channel(capfd):
    result = run_tiny("Chatty")
    assert result.status == "complete" and result.reproducible == [True, True]
    captured = capfd.readouterr()
    assert "{not json" in captured.err and "predicting 0" in captured.err
    assert "not json" not in captured.out  # the agent's stdout goes to stderr
    starts = result.isolation["worker_start_median_seconds"]
    assert isinstance(starts, float) and 0 < starts < 5


def test_an_agent_file_imports_its_sibling_module(tmp_path):
    (tmp_path / "helper_for_agent.py").write_text("ANSWER = 1\n")
    (tmp_path / "my_agent.py").write_text(
        "import torch\nfrom helper_for_agent import ANSWER\n"
        "from sealed_agents import Quiet\n\n"
        "class Ones(Quiet):\n"
        "    def predict(self, x, task_id):\n"
        "        return torch.full((len(x),), ANSWER, dtype=torch.int64)\n")
    result = evaluate(f"{tmp_path / 'my_agent.py'}:Ones", SPLIT, device="cpu", env_kwargs=TINY,
                      flops=False)
    assert result.status == "complete"
    assert result.agent["name"] == f"{tmp_path / 'my_agent.py'}:Ones"


def test_an_agent_file_directly_in_tmp_with_tmp_on_the_import_path(monkeypatch):
    """A script run from /tmp puts /tmp on the import path: the sandbox must not bind the
    host's /tmp over the workers' private one (it did, read-only, and the zygote could not
    make its temp folder), and an agent file directly in /tmp must still be importable."""
    agent_file = Path("/tmp") / f"clbench_test_agent_{uuid.uuid4().hex}.py"
    agent_file.write_text("from sealed_agents import Quiet\n\n\nclass Nothing(Quiet):\n"
                          "    pass\n")
    monkeypatch.syspath_prepend("/tmp")
    try:
        result = evaluate(f"{agent_file}:Nothing", SPLIT, device="cpu", env_kwargs=TINY,
                          flops=False)
    finally:
        agent_file.unlink()
    assert result.status == "complete", result.error
    assert result.sealed is bwrap_status()[0], result.isolation["reason"]


def test_an_agents_folder_in_the_working_directory_shadows_nothing(tmp_path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "__init__.py").write_text("raise ImportError('the wrong agents')\n")
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "clbench", "run", "--env", SPLIT, "--agent", "random",
         "--env-arg", "n_tasks=1", "--env-arg", "max_train_per_task=100", "--no-flops",
         "--quiet", "--device", "cpu", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert load_result(out).status == "complete"


def test_a_learn_that_depends_on_more_than_its_state_fails_naming_the_task(tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(AgentError, match=r"learn \(replay\) on task 0 \(mnist5k:0\|1\): "
                                         r"replaying learn .* did not reproduce") as caught:
        run_tiny("ClockDependent", out=out)
    assert "state['stamp'] differs" in str(caught.value)
    saved = load_result(out)
    assert saved.status == "failed" and saved.failure["kind"] == "irreproducible"
    assert saved.failure["task_id"] == 0 and saved.accuracy == []


@needs_bwrap
def test_inside_the_sandbox_no_data_no_network_nothing_kept(monkeypatch):
    monkeypatch.setenv("PROBE_HARNESS_PID", str(os.getpid()))
    result = run_tiny("SandboxProbe", flops=False)
    assert result.sealed is True and result.isolation["sandbox"] == "bwrap"
    first, second = result.agent_metrics
    for figures in (first, second):
        assert figures["mnist5k_readable"] is False
        assert figures["debian_datasets_listed"] == []
        assert figures["data_root_listed"] == []
        assert figures["network"] is False
        assert figures["home_writable"] is False
        assert figures["parent_visible"] is False
        # root outside a user namespace (CI) keeps every capability unless bwrap drops them:
        # a worker then remounted / read-write and wrote to the host's /usr
        assert figures["capabilities"] == 0 and figures["root_remountable"] is False
        assert figures["zygote_memory_writable"] is False
        assert figures["pid_1_memory_writable"] is False  # bwrap's reaper's was
        # as root, core_pattern ran any command as root outside the sandbox
        assert figures["sysctl_writable"] == []
        # io_uring opened internet sockets; evicted pages and PID 1's limits carried data
        assert figures["refused_calls"] == ["io_uring_setup", "fadvise", "prlimit of PID 1"]
        assert figures["zygote_counters_readable"] == []  # its children's page faults
        assert figures["page_files_open"] == []  # page flags, set and read across calls
        assert figures["harness_output_readable"] is False  # a worker's stderr was the file
    assert second["leftover_seen"] is False  # what task 0's worker wrote to /tmp is gone


def test_an_outputs_folder_is_made_then_hidden_and_the_root_folder_refused(tmp_path):
    """A folder the harness would make later must exist when the sandbox is built, or the
    sandbox (which shows the machine read-only) would show it once made."""
    out = tmp_path / "new" / "deeper" / "r.json"
    (tmp_path / "kept.txt").write_text("")
    options = hide_outputs([out], bound=[tmp_path])
    folder = str(out.parent.resolve())
    assert out.parent.is_dir()
    assert options == ["--tmpfs", folder, "--remount-ro", folder]  # nothing in it yet
    for beside in ("r.json", "r.json.ckpt", ".r.json.lock"):  # the run's own: kept out
        (tmp_path / beside).touch()
    shown = hide_outputs([tmp_path / "r.json"], bound=[tmp_path])
    assert ["--ro-bind-try", str(tmp_path / "kept.txt"), str(tmp_path / "kept.txt")] == \
        shown[2:5] and str(tmp_path / "new") in shown  # the rest is bound back
    assert not [option for option in shown if "r.json" in option]
    assert hide_outputs([tmp_path / "r.json"]) == []  # in the private /tmp: nothing to hide
    with pytest.raises(ValueError, match=r"cannot hide a result file in / from its workers"):
        hide_outputs(["/r.json"])


@needs_bwrap
def test_leftovers_however_deep_are_gone_by_the_next_call():
    result = run_tiny("LeavesADeepChain", flops=False)
    first, second = result.agent_metrics
    assert first["chain_processes"] == 41  # the whole chain ran in task 0's worker
    assert second["chain_processes"] == 0


def test_sys_exit_and_os_exit_in_learn_are_agent_errors(tmp_path, capsys):
    out = tmp_path / "exit.json"
    with pytest.raises(AgentError, match=r"learn on task 1 .*SystemExit"):
        run_tiny("ExitsInLearn", out=out, flops=False)
    saved = load_result(out)
    assert saved.status == "failed" and saved.failure["kind"] == "agent_error"
    assert "sys.exit(0)" in saved.failure["traceback"]
    assert len(saved.accuracy) == 1
    with pytest.raises(AgentError, match=r"learn on task 1 .*exited with code 3") as caught:
        run_tiny("HardExitInLearn", flops=False)
    assert caught.value.result.failure["kind"] == "worker_died"


def test_a_worker_killed_by_a_real_time_signal_is_the_agents_failure():
    """Not the harness's: the exit is described by the signal's number (once a ValueError
    of signal.Signals made it a harness error)."""
    number = signal.SIGRTMIN + 6
    with pytest.raises(AgentError, match=rf"learn on task 1 .*killed by signal {number}") \
            as caught:
        run_tiny("DiesOfARealTimeSignal", flops=False)
    assert caught.value.result.failure["kind"] == "worker_died"


def test_learn_timeout_kills_the_worker_and_names_the_task():
    began = time.perf_counter()
    with pytest.raises(AgentError, match=r"learn on task 1 .*learn timeout of 2 s") as caught:
        run_tiny("Sleeper", flops=False, learn_timeout=2, agent_kwargs={"seconds": 600})
    assert caught.value.result.failure["kind"] == "timeout"
    assert time.perf_counter() - began < 120


def test_an_unwritable_out_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    began = time.perf_counter()
    with pytest.raises(ValueError, match=r"--out .*a-file/r.json: cannot write there"):
        run_tiny("Quiet", out=blocker / "r.json")
    assert time.perf_counter() - began < 5


def test_fresh_agent_baseline_with_future_queries():
    result = evaluate("sealed_agents:Quiet", SPLIT, device="cpu", flops=False,
                      env_kwargs={**TINY, "query_future": True})
    assert len(result.fwt_baseline) == 2
    assert result.fwt_baseline == result.accuracy[0]  # always 0: the same labels every time
    assert result.metrics["fwt"] == 0.0  # R[0][1] - b_1, not R[0][1] - 0.5


def test_without_bubblewrap_workers_run_unsandboxed_and_say_so(monkeypatch):
    from clbench.sealed import sandbox

    monkeypatch.setattr(sandbox, "bwrap_status", lambda: (False, "bubblewrap is not installed"))
    result = run_tiny("Chatty")
    assert result.status == "complete" and result.sealed is False
    assert result.isolation == {**result.isolation, "mode": "workers", "sandbox": None,
                                "reason": "bubblewrap is not installed"}


def test_the_channel_carries_raw_arrays_and_rejects_malformed_ones():
    import socket

    import torch

    from clbench.sealed.channel import (
        MalformedMessage,
        array_blob,
        blob_array,
        receive_message,
        send_message,
    )

    labels = torch.tensor([0, 1, 1], dtype=torch.int64)
    meta, raw = array_blob(labels)
    left, right = socket.socketpair()
    with left, right:
        send_message(left, {"labels": meta}, [raw])
        header, blobs = receive_message(right)
    assert torch.equal(blob_array(header["labels"], blobs[0]), labels)
    with pytest.raises(MalformedMessage, match="arrived as 23 bytes"):
        blob_array(meta, raw[:-1])
    with pytest.raises(MalformedMessage, match="dtype must be one of"):
        blob_array({"dtype": "object", "shape": [3]}, raw)


def test_in_process_mode_says_it_is_not_sealed():
    result = run_tiny("Quiet", seal=False)
    assert result.sealed is False and result.isolation["mode"] == "in-process"
    assert result.reproducible == [True, True]


def _marked_processes(marker: str) -> list[int]:
    """Pids whose environment carries ``marker`` (a psutil-free scan of /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize(("number", "sandboxed"), [
    (signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGKILL, True),
    (signal.SIGKILL, False)], ids=["SIGINT", "SIGTERM", "SIGKILL", "SIGKILL-unsandboxed"])
def test_signals_end_the_run_and_leave_nothing_behind(tmp_path, number, sandboxed):
    """Ends as interrupted (SIGINT, SIGTERM) or as of the last finished task (SIGKILL); no
    zygote, worker or child the agent detached, and no temp folder, outlives the run."""
    marker = f"CLBENCH_TEST_MARKER_{uuid.uuid4().hex}"
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "r.json"
    environment = {**os.environ, marker: "1", "TMPDIR": str(temp),
                   "PYTHONPATH": str(Path(AGENTS).parent)}
    if not sandboxed:  # a bwrap that fails: the workers run unsandboxed
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "bwrap").write_text("#!/bin/sh\nexit 1\n")
        (fake / "bwrap").chmod(0o755)
        environment["PATH"] = f"{fake}{os.pathsep}{os.environ['PATH']}"
    elif not bwrap_status()[0]:
        pytest.skip(f"the sandbox cannot be tested here: {bwrap_status()[1]}")
    process = subprocess.Popen(
        [sys.executable, "-m", "clbench", "run", "--env", SPLIT, "--agent",
         f"{AGENTS}:Sleeper", "--env-arg", "n_tasks=3", "--env-arg", "max_train_per_task=100",
         "--env-arg", "max_test_per_task=40", "--no-flops", "--quiet", "--device", "cpu",
         "--out", str(out)], env=environment, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if out.exists() and len(json.loads(out.read_text())["accuracy"]) == 1:
                break
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        time.sleep(1.0)  # task 1's learn is sleeping, and has started its detached child
        process.send_signal(number)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    saved = load_result(out)
    assert len(saved.accuracy) == 1 and saved.sealed is sandboxed
    if number == signal.SIGKILL:
        assert saved.status == "running"  # as of the last finished task
    else:
        assert process.returncode == (130 if number == signal.SIGINT else 143), stderr
        assert saved.status == "interrupted" and saved.failure["kind"] == "interrupted"
        assert signal.Signals(number).name in saved.error
    deadline = time.monotonic() + 20
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _marked_processes(marker) == []
    assert list(temp.iterdir()) == []


def test_the_zygote_skips_a_setting_file_that_is_missing_or_reads_empty(tmp_path):
    """A CI machine's /proc/self/autogroup read empty and the zygote's start raised
    IndexError: every sealed run there failed. Such a file has no value to put back."""
    from clbench.sealed.zygote import _own_settings

    (tmp_path / "empty").write_text("")
    (tmp_path / "autogroup").write_text("/autogroup-7 nice 0\n")
    (tmp_path / "folder").mkdir()
    found = _own_settings(*(str(tmp_path / name) for name in
                            ("empty", "autogroup", "folder", "missing")))
    assert found == {tmp_path / "autogroup": "0"}


def test_a_sigterm_ends_the_zygotes_loop_without_raising_so_its_cleanup_runs(tmp_path):
    """The zygote's SIGTERM handler (the harness's death) only shuts the control socket: the
    serving loop returns and the cleanup that kills the workers follows. A handler that raised
    could land between the two and skip the cleanup (a worker's detached child then outlived
    the run: the SIGKILL-unsandboxed case above, about 1 run in 4 on a loaded machine)."""
    from clbench.sealed.zygote import Zygote

    ours, harness_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote = Zygote(ours, tmp_path, sandboxed=False)
    previous = signal.signal(signal.SIGTERM, zygote.stop)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        zygote.serve_forever()  # blocked in recv until the signal; returns, raises nothing
        zygote.reply({"pid": 1})  # nobody listens any more: not an error
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
        harness_end.close()
        ours.close()
    assert zygote.stopping


def test_an_interrupt_while_the_workers_start_leaves_a_valid_interrupted_file(tmp_path,
                                                                              monkeypatch):
    """Ctrl-C before the agent's first call (here: while the zygote starts) still ends in a
    file that validates, status interrupted (a sweep killed mid-way once left an invalid one)."""
    from clbench import harness

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.SealedRunner, "__init__", interrupted)
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        evaluate("naive", SPLIT, device="cpu", env_kwargs=TINY, out=out)
    kept = load_result(out)
    assert kept.status == "interrupted" and kept.n_tasks_done == 0 and not kept.sealed


# ----------------------------------------------------------------------------- early start
def test_import_clbench_imports_no_torch():
    """What lets `clbench run` launch its zygote before this process imports torch."""
    code = "import sys, clbench, clbench.sealed.workers; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_the_command_line_runs_on_the_zygote_it_launched_first(tmp_path, monkeypatch):
    """`clbench run` launches the zygote before it imports torch; the run takes that very
    pool (one launch); a run that needs another (here an agent file) closes it and launches
    its own; nothing is left running."""
    from clbench import cli
    from clbench.__main__ import start_workers_early
    from clbench.sealed import workers

    launched = []
    real_init = workers.WorkerPool.__init__

    def counted(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        launched.append(self)

    monkeypatch.setattr(workers.WorkerPool, "__init__", counted)
    argv = ["run", "--env", SPLIT, "--agent", "naive", "--agent-arg", "epochs=1", "--env-arg",
            "n_tasks=2", "--env-arg", "max_train_per_task=100", "--env-arg",
            "max_test_per_task=40", "--no-flops", "--quiet", "--device", "cpu", "--out",
            str(tmp_path / "r.json")]
    start_workers_early(argv)
    assert len(launched) == 1 and workers._early is launched[0]
    assert cli.main(argv) == 0
    assert len(launched) == 1 and workers._early is None
    assert load_result(tmp_path / "r.json").status == "complete"
    assert launched[0].process.poll() is not None  # closed by the run

    start_workers_early(["run", "--agent", "naive"])
    early = launched[-1]
    result = evaluate(f"{AGENTS}:Quiet", SPLIT, device="cpu", env_kwargs=TINY, flops=False)
    assert result.status == "complete" and len(launched) == 3
    assert early.process.poll() is not None and workers._early is None

    for argv in (["run", "--agent", "naive", "--no-seal"], ["list"],
                 ["run", "--agent", "naive", "--env-arg", "data_root=/elsewhere"],
                 ["run", "--agent", "no_such_agent"]):
        start_workers_early(argv)
        assert workers._early is None, argv
    assert len(launched) == 3


def test_process_parents_reads_the_process_table():
    """The /proc scan the zygote falls back on to find a worker's children."""
    from clbench.sealed.zygote import _children, process_parents

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        parents = process_parents()
        assert parents[os.getpid()] == os.getppid() and parents[child.pid] == os.getpid()
        assert child.pid in _children(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_the_wipe_removes_a_folder_a_worker_made_read_only():
    """Without CAP_DAC_OVERRIDE a plain rmtree cannot empty a folder made read-only, and the
    zygote's wipe kept its files. Checked in a fork as a user without it (nobody, where the
    tests run as root, which file modes do not stop)."""
    from clbench.sealed.zygote import remove_tree

    pid = os.fork()
    if pid == 0:  # the child: exit 0 if the folder is gone, 1 if not, 2 on an error
        code = 2
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            top = Path(tempfile.mkdtemp(dir="/tmp"))
            (top / "keep").mkdir()
            (top / "keep" / "data").write_text("kept?")
            os.chmod(top / "keep", 0o555)
            os.chmod(top, 0o555)
            remove_tree(top)
            code = 1 if top.exists() else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_wipe_removes_a_chain_deeper_than_the_recursion_limit(tmp_path):
    """Python 3.11's rmtree recurses: a worker's chain of 1,200 nested folders raised
    RecursionError in the zygote's wipe."""
    from clbench.sealed.zygote import remove_tree

    deepest = tmp_path / "top"
    deepest.mkdir()
    for _ in range(sys.getrecursionlimit() + 200):
        deepest /= "d"
        os.mkdir(deepest)
    (deepest / "data").write_text("kept?")
    remove_tree(tmp_path / "top")
    assert not (tmp_path / "top").exists()


def test_agent_imports_lists_the_environments_modules_the_agents_code_imports(tmp_path,
                                                                              monkeypatch):
    """What a worker imports (and excuses) before the agent's code: top-level imports of
    the agent's file and of the files of its own tree it imports, in ``if`` and ``try``
    blocks too; never one inside a function, and never a module of the agent's own tree,
    however it is named (through a package on the path, its own file ran in the worker
    before the excuse was measured and could set the clock it is measured by)."""
    from clbench.sealed.workers import agent_imports

    source = tmp_path / "agent.py"
    source.write_text(
        "import os, numpy as np\nfrom sklearn import metrics\nfrom . import sibling\n"
        "import helper\n"
        "try:\n    import scipy.stats\nexcept ImportError:\n    import json\n"
        "if True:\n    from torch import nn\n"
        "def later():\n    import pandas\n")
    (tmp_path / "helper.py").write_text("import sklearn.metrics\nimport unrelated_missing\n")
    (tmp_path / "unused.py").write_text("import pandas\n")
    assert agent_imports(f"{source}:Agent") == [
        "os", "numpy", "sklearn", "scipy.stats", "json", "torch", "sklearn.metrics"]
    package = tmp_path / "evilpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "agent.py").write_text("import evilpkg.agent\nimport evilpkg\nimport os\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert agent_imports(f"{package / 'agent.py'}:Agent") == ["os"]
    assert agent_imports("evilpkg.agent:Agent") == ["os"]
    source.write_text("import (")
    assert agent_imports(f"{source}:Agent") == []  # its own import reports the error
