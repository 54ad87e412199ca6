"""The zygote: a process with torch and clbench imported that forks one worker per call.

Started by :class:`clbench.sealed.workers.WorkerPool` as
``python -P -m clbench.sealed.zygote CONTROL_FD PARENT_PID`` (inside ``bwrap`` where the
sandbox works; ``-P``: the current directory is not on the import path). It talks to the
harness over a ``SOCK_SEQPACKET`` control socket, one JSON message per packet:

- first the harness sends ``{"extra_paths": [...], "agent_paths": [...], "preload": [...],
  "sandboxed": bool}``; the zygote answers ``{"ready": true}`` once its imports are done.
  The agent's own folder (``agent_paths``) is never on the zygote's import path, only on
  its workers': torch and clbench try optional imports, and a file of that name beside the
  agent would otherwise run in the zygote, which outlives every call;
- ``{"op": "spawn"}`` with three sockets passed as file descriptors: fork a worker that
  serves one call on the first, prints to the second (its stdout and stderr, which the
  harness forwards to its own stderr) and hands the third to the fork that counts a
  prediction's FLOPs, for that pass's reply; answer ``{"pid": ...}``;
- ``{"op": "reap_counted", "pid": ...}``: reap the process that counted a prediction's
  FLOPs (a worker's grandchild, left to the zygote: see :func:`serve`); answer its CPU
  seconds;
- ``{"op": "reap", "pid": ..., "grace": seconds}``: let the worker exit (or kill it after
  ``grace``), kill whatever it left running, wipe its temp folder (and, sandboxed, the
  private /tmp and the namespace's System V IPC objects); answer its exit status and the CPU
  seconds of the worker and all it started (see :meth:`Zygote.reap`);
- ``{"op": "stop"}``, a closed socket, or the harness's death: kill every worker, remove
  the temp folder, exit.

Before it answers ready, the zygote refuses itself and so every worker what would carry an
agent's data from one call to the next where a reap cannot empty it: the kernel's keyrings,
message queues, System V IPC, internet sockets, io_uring, control of the page cache, and
settings of other processes (:data:`clbench.sealed.seccomp.HIDDEN_STORAGE`).

A worker (:func:`worker_main`) starts a new session (so its leftovers can be killed as a
group), dies with the zygote (``PR_SET_PDEATHSIG``), prints to its own socket, reads one
request from its socket, runs the agent call (:func:`serve`) and answers with state bytes
or labels as raw arrays (see :mod:`clbench.sealed.channel`). Before the agent's code is
imported it sends the CPU seconds the call may spend untimed (see :func:`serve`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt options
WORKER_FLAG = "CLBENCH_SEALED_WORKER"
WAIT_ALL = 0x40000000  # waitpid's __WALL: children whose exit signal is not SIGCHLD too
# What a worker adds before it imports the agent: the agent's folder on the import path and
# the modules the agent's source imports from the environment (from the zygote's config).
AGENT_PATHS: list[str] = []
PRELOAD: list[str] = []
SANDBOX_TEMP = Path("/tmp")
# On the CPU the two passes of a prediction must agree to the label (on CUDA kernels may
# differ between processes, and a query at the decision boundary flip: not checked there).
UNEQUAL_PREDICTIONS = ("the FLOP-counted pass labelled the queries differently from the timed "
                       "pass: predict must answer the same whether or not it is counted (and "
                       "be deterministic under the harness's seeds)")


def prctl(option: int, value: int) -> None:
    """``prctl(2)`` through libc (Linux only; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory instead of returning it to the kernel.

    A long-lived process (the hand-written loop) reuses its heap from one minibatch to the
    next; a fresh worker with glibc's initial settings maps and unmaps every large tensor
    and pays page faults for it on every step. Workers live for one call, so keeping freed
    memory costs nothing; this makes their ``learn`` as fast as in a warmed process.
    """
    if sys.platform.startswith("linux"):
        mallopt = ctypes.CDLL(None).mallopt
        # 32 MiB is the largest mmap threshold glibc accepts on 64-bit systems
        for option, value in ((M_MMAP_THRESHOLD, 2**25), (M_TRIM_THRESHOLD, 2**31 - 1)):
            mallopt(option, value)


# --------------------------------------------------------------------------- worker side
def serve(header: dict[str, Any], blobs: list[bytearray], started: float,
          channel: socket.socket, counted_channel: int) -> tuple[dict[str, Any], list[bytes]]:
    """Run one agent call described by ``header``; return the reply (header, blobs).

    First, before any of the agent's own code runs, this worker sends the harness the CPU
    seconds the call may spend outside what it times (``excused_cpu_seconds``): importing
    the modules the agent's source imports from the environment (:data:`PRELOAD`; a
    library such as torchvision takes seconds) and, for a prediction with FLOPs, the pass
    that counts them. The agent's code could rewrite anything sent later; the harness
    checks the timed seconds against the rest of the call's CPU
    (:func:`clbench.sealed.workers.check_seconds`).

    A ``predict`` with ``count_flops`` answers both the seconds and the FLOPs of one
    evaluation step, so that its queries (hundreds of MB on a long stream) cross the
    channel once: the FLOPs are counted in a grandchild of this still untouched worker,
    which answers the harness on ``counted_channel`` (never on ``channel``, which it
    closes: it could answer for this worker), then the timed pass runs here. This worker
    reads nothing of that reply, so the timed pass cannot take its labels; the harness
    compares both passes' labels. Nor does this worker reap the counting process, whose
    resource usage (page faults, context switches) the timed pass could then read, a
    channel of tens of bits: its parent leaves it to the zygote, which the harness asks to
    reap it (and count its CPU) before it lets the timed pass begin. Neither pass sees
    what the other left in memory (a cache, a global), as when each ran in a worker of its
    own; in the sandbox, whatever the counting process left in /tmp is gone before the
    timed pass begins. The fork comes before any array reaches the device: a CUDA context
    does not survive ``fork``."""
    from clbench.sealed.channel import receive_message, send_message

    excused = _preload()
    sys.path.extend(path for path in AGENT_PATHS if path not in sys.path)
    counting = header["op"] == "predict" and bool(header["count_flops"])
    if not counting:
        os.close(counted_channel)
        send_message(channel, {"excused_cpu_seconds": excused})
        return _serve(header, blobs, started, bool(header.get("count_flops")))
    counter = _in_grandchild(lambda: _serve(header, blobs, started, True)[0],
                             channel.fileno(), counted_channel)
    send_message(channel, {"excused_cpu_seconds": excused, "counted_pid": counter})
    receive_message(channel)  # the harness had the zygote reap the counting process
    if SANDBOX_FOLDERS is not None:
        if os.getppid() == 1:  # the zygote is the sandbox's init, which kill(-1) spares
            kill_the_rest_of_the_sandbox()
        wipe_temp(SANDBOX_FOLDERS)
        Path(os.environ["TMPDIR"]).mkdir(exist_ok=True)
    return _serve(header, blobs, started, False)


def _preload() -> float:
    """Import :data:`PRELOAD` (what fails to import is left to the agent's own import to
    report); the CPU seconds it took."""
    import importlib

    begun = time.process_time()
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    return time.process_time() - begun


def _in_grandchild(call: Any, channel: int, answer: int) -> int:
    """Run ``call()`` in a grandchild of this worker, which sends the reply header it
    returns on socket ``answer`` (a ``worker_died`` reply where it fails to) and closes
    file ``channel`` first; its parent exits at once, leaving it to the zygote (the
    subreaper, or the sandbox's PID 1), so that this process never reaps it. Returns its
    pid once it has ended; this process closes ``answer`` at once."""
    pid_read, pid_write = os.pipe()
    done_read, done_write = os.pipe()  # the grandchild alone holds the write end
    if os.fork() == 0:
        try:
            os.close(pid_read)
            os.close(done_read)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(pid_write)
                _answer(call, channel, answer)
            os.write(pid_write, str(grandchild).encode())
        finally:
            os._exit(0)
    for end in (pid_write, done_write, answer):
        os.close(end)
    with os.fdopen(pid_read, "rb") as stream:
        grandchild = int(stream.read() or 0)
    with os.fdopen(done_read, "rb") as stream:
        stream.read()  # end of file: the grandchild has ended
    return grandchild


def _answer(call: Any, channel: int, answer: int) -> None:
    """In the process counting a prediction: run ``call()``, send its reply header on
    ``answer`` and exit (never returns)."""
    from clbench.sealed.channel import send_message

    code = 0
    try:
        os.close(channel)
        # files of its own for 0, 1 and 2 (its prints are lost, a pass the timed one
        # repeats): flags and socket options set on a file shared with the worker reached
        # the timed pass (about 60 bits a call)
        for number in (0, 1, 2):
            fresh = os.open(os.devnull, os.O_RDWR)
            os.dup2(fresh, number)
            os.close(fresh)
        reply = call()
    except BaseException as error:  # noqa: BLE001  (reported as the pass's death)
        code = 70
        reply = {"ok": False, "kind": "worker_died", "stage": "predict (FLOP count)",
                 "task_id": None, "traceback": None,
                 "message": f"the process counting the prediction's FLOPs ended with "
                            f"{type(error).__name__} before it answered (the agent called "
                            "sys.exit, or broke the worker's code)"}
    try:
        send_message(socket.socket(fileno=answer), reply)
    finally:
        os._exit(code)


def _serve(header: dict[str, Any], blobs: list[bytearray], started: float, count_flops: bool
           ) -> tuple[dict[str, Any], list[bytes]]:
    """One agent call, timed or (``count_flops``) under the FLOP counter, which must see all
    of its work (the watch starts before the agent's module is imported)."""
    import torch

    from clbench.sealed.calls import AgentCallError
    from clbench.sealed.channel import blob_array
    from clbench.sealed.counted import counted_on_one_thread

    torch.set_num_threads(int(header["threads"]))
    device = torch.device(header["device"])
    state = blobs[0] if header["has_state"] else None
    arrays = [blob_array(meta, blob).to(device)
              for meta, blob in zip(header["arrays"], blobs[1:], strict=True)]
    stage = "learn (replay)" if header["op"] == "learn" else "predict (FLOP count)"
    try:
        with counted_on_one_thread(count_flops, device, stage, True):
            return _call(header, state, arrays, started, count_flops, device)
    except AgentCallError as error:
        return ({"ok": False, "started": started, "kind": error.kind, "stage": error.stage,
                 "task_id": error.task_id, "message": str(error),
                 "traceback": error.traceback}, [])


def _call(header: dict[str, Any], state: bytearray | None, arrays: list, started: float,
          count_flops: bool, device: Any) -> tuple[dict[str, Any], list[bytes]]:
    """Import the agent's class, run the call; the reply (header, blobs)."""
    from clbench.agent import load_agent_class, supported_scenarios
    from clbench.sealed.calls import AgentCallError, learn_call, predict_call
    from clbench.sealed.channel import array_blob
    from clbench.tasks import Task, TaskSpec

    try:
        cls = load_agent_class(header["agent"])
    except Exception as error:
        raise AgentCallError("import", error) from error
    if header["op"] == "describe":
        try:
            scenarios = supported_scenarios(cls)
        except TypeError as error:
            raise AgentCallError("describe", error, "contract") from error
        return {"ok": True, "started": started, "scenarios": list(scenarios)}, []
    if header["op"] == "learn":
        task = Task(header["task_id"], TaskSpec.from_name(header["task_name"]), *arrays,
                    scenario=header["scenario"])
        outcome = learn_call(cls, header["kwargs"], device, state, task, header["seed"],
                             count_flops)
        return ({"ok": True, "started": started, "seconds": outcome.seconds,
                 "peak_memory_bytes": outcome.peak_memory_bytes, "flops": outcome.flops,
                 "metrics": outcome.metrics}, [outcome.state])
    inputs, task_ids = arrays
    shapes = [tuple(shape) for shape in header["input_shapes"]]
    outcome = predict_call(cls, header["kwargs"], device, state, inputs, task_ids, shapes,
                           header["seed"], header["task_id"], count_flops, header["purpose"])
    meta, raw = array_blob(outcome.labels)
    return ({"ok": True, "started": started, "seconds": outcome.seconds,
             "flops": outcome.flops, "labels": meta,
             "labels_sha256": hashlib.sha256(raw).hexdigest()}, [raw])


def worker_main(fd: int, prints: int, counted: int, workdir: Path, zygote_pid: int) -> None:
    """The forked worker: one request in on socket ``fd``, one reply out, then exit (never
    returns). Its stdout and stderr become socket ``prints``; ``counted`` is for the reply
    of a prediction's FLOP-counted pass (see :func:`serve`)."""
    started = time.perf_counter()
    os.setsid()
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:
        os._exit(1)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    # the agent's prints go to the harness, never into the channel, and nothing of the
    # harness's own stderr stays open here (see clbench.sealed.workers.Forwarder)
    for number in (1, 2):
        os.dup2(prints, number)
    os.close(prints)
    os.environ["TMPDIR"] = str(workdir)
    tempfile.tempdir = None
    from clbench.sealed.channel import receive_message, send_message

    sock = socket.socket(fileno=fd)
    code = 0
    try:
        header, blobs = receive_message(sock)
        try:
            reply, out = serve(header, blobs, started, sock, counted)
        except Exception as error:  # noqa: BLE001  (e.g. the agent broke the worker's code)
            reply, out = {"ok": False, "started": started, "kind": "agent_error",
                          "stage": header.get("op", "worker"), "task_id": None,
                          "message": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()}, []
        send_message(sock, reply, out)
    except BaseException:  # noqa: BLE001  (the harness sees a worker that died)
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110
                pass
        os._exit(code)


def _own_settings(*paths: str) -> dict[Path, str]:
    """The current value (the last word) of each per-process setting file that reads.
    Some kernels or containers leave one out, refuse to read it or read it empty
    (as ``/proc/self/autogroup`` did on a CI machine, which crashed the zygote's start): such a
    file is skipped, as there is no value to put back."""
    settings = {}
    for path in map(Path, paths):
        try:
            words = path.read_text().split()
        except OSError:
            continue
        if words:
            settings[path] = words[-1]
    return settings


# --------------------------------------------------------------------------- zygote side
class Zygote:
    def __init__(self, control: socket.socket, temp: Path, sandboxed: bool) -> None:
        self.control, self.temp, self.sandboxed = control, temp, sandboxed
        self.workers: dict[int, Path] = {}
        self.cpu_before: dict[int, float] = {}
        self.count = 0
        self.pid = os.getpid()
        self.serving = self.stopping = False
        # per-process settings a worker (same user) may write for the zygote, PID 1, through
        # /proc (seccomp refuses the system calls that set another process's): put back
        # after every call, as far as a process without capabilities can
        self.settings = _own_settings(
            "/proc/self/oom_score_adj", "/proc/self/coredump_filter", "/proc/self/autogroup")

    def stop(self, *_: Any) -> None:
        """The SIGTERM handler (the harness died, or asks this zygote to stop). Once serving,
        it only shuts the control socket, so that :meth:`serve_forever` returns and
        :meth:`shutdown` runs; before, while the imports run and no worker exists, it exits.

        Once workers may exist it must not raise. A handler raising ``SystemExit`` could
        land after the loop had ended and before the cleanup began, and skip it: the zygote
        exited with its workers alive, they died of their parent-death signal, and a child
        one had detached was reparented to init and outlived the run (the unsandboxed
        SIGKILL case of ``tests/test_sealed.py``, about 1 run in 4 on a loaded machine)."""
        if os.getpid() != self.pid:
            return  # a worker just forked, before it reset its handlers: not ours to stop
        if not self.serving:
            raise SystemExit(0)  # still importing: no worker exists, so stop at once
        self.stopping = True
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)

    def reply(self, message: dict[str, Any]) -> None:
        try:
            self.control.send(json.dumps(message).encode())
        except OSError:
            if not self.stopping:  # after stop() nobody listens: the loop ends next
                raise

    def serve_forever(self) -> None:
        self.serving = True
        while not self.stopping:
            data, fds, _, _ = socket.recv_fds(self.control, 65536, 3)
            if not data:
                return
            request = json.loads(data)
            if request["op"] == "spawn":
                self.reply({"pid": self.spawn(*fds)})
            elif request["op"] == "reap":
                self.reply(self.reap(int(request["pid"]), float(request["grace"])))
            elif request["op"] == "reap_counted":
                self.reply(self.reap_counted(int(request["pid"])))
            else:
                return

    def spawn(self, fd: int, prints: int, counted: int) -> int:
        self.count += 1
        workdir = self.temp / f"worker-{self.count}"
        workdir.mkdir()
        zygote_pid = os.getpid()
        cpu_before = children_cpu_seconds()
        pid = os.fork()
        if pid == 0:
            try:
                self.control.close()
                worker_main(fd, prints, counted, workdir, zygote_pid)
            finally:
                os._exit(71)
        for end in (fd, prints, counted):
            os.close(end)
        self.workers[pid] = workdir
        self.cpu_before[pid] = cpu_before
        return pid

    def reap(self, pid: int, grace: float) -> dict[str, Any]:
        """Wait up to ``grace`` seconds for the worker, then kill it and all it started.
        The reply gives how it ended and its ``cpu_seconds``: the kernel's count of the CPU
        time of the worker and of every process it started, threads included, since the
        fork (what this zygote's reaped children used meanwhile: a worker's leftovers are
        reparented to this subreaper, or PID 1, and reaped here). Workers run one at a
        time, and a worker cannot reach this figure: the zygote is not dumpable."""
        deadline = time.monotonic() + grace
        status = None
        while status is None and time.monotonic() < deadline:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status = raw if done else None
            if status is None:
                time.sleep(0.002)
        _kill_group(pid)
        if status is None:
            _, status = os.waitpid(pid, 0)
        _kill_group(pid)
        if self.sandboxed:
            kill_the_rest_of_the_sandbox()
        self.kill_orphans()
        workdir = self.workers.pop(pid)
        if SANDBOX_FOLDERS is not None:  # nothing a worker kept survives its call
            wipe_temp(SANDBOX_FOLDERS)  # the worker's folder with the rest
            remove_ipc_objects()
            for path, value in self.settings.items():
                with contextlib.suppress(OSError):
                    path.write_text(value)
        else:
            try:
                remove_tree(workdir)
            except OSError as error:
                raise WipeFailed(f"the worker's temp folder {workdir} could not be removed "
                                 f"({error}); the run stops") from None
        cpu = children_cpu_seconds() - self.cpu_before.pop(pid)
        if os.WIFSIGNALED(status):
            return {"exit": None, "signal": os.WTERMSIG(status), "cpu_seconds": cpu}
        return {"exit": os.WEXITSTATUS(status), "signal": None, "cpu_seconds": cpu}

    def reap_counted(self, pid: int) -> dict[str, Any]:
        """Reap the process that counted a prediction's FLOPs (ended; never a worker);
        answer its CPU seconds, with those of the processes it waited for (0 where it is
        not this zygote's child)."""
        if pid <= 0 or pid in self.workers:
            return {"cpu_seconds": 0.0}
        try:  # ended, or it closed its pipe early to keep this zygote waiting: kill it
            os.kill(pid, signal.SIGKILL)  # (unreaped, so its pid cannot have been reused)
        except ProcessLookupError:
            pass
        try:
            _, _, usage = os.wait4(pid, WAIT_ALL)
        except ChildProcessError:
            return {"cpu_seconds": 0.0}
        return {"cpu_seconds": usage.ru_utime + usage.ru_stime}

    def kill_orphans(self) -> None:
        """Kill the processes a worker left behind (reparented to this subreaper)."""
        me = os.getpid()
        for _ in range(20):
            orphans = [pid for pid in _children(me) if pid not in self.workers]
            if not orphans:
                break
            for pid in orphans:
                _kill_group(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, WAIT_ALL)
                except (ProcessLookupError, ChildProcessError):
                    pass

    def shutdown(self) -> None:
        """Kill every worker and what it left behind. Not interruptible: when the harness
        dies, its end of the control socket closes and the kernel sends SIGTERM (parent
        death), in either order; a SIGTERM raised inside this cleanup once cut it short and
        left a worker's detached child running."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in list(self.workers):
            _kill_group(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.workers.clear()
        self.cpu_before.clear()
        self.kill_orphans()
        if not self.sandboxed:
            shutil.rmtree(self.temp, ignore_errors=True)


# In the sandbox: the folders of its private /tmp when the zygote started (those bwrap made
# to hold what it binds in), with their mode and times; None outside a sandbox.
SANDBOX_FOLDERS: dict[str, tuple[int, int, int]] | None = None


def sandbox_folders() -> dict[str, tuple[int, int, int]]:
    """/tmp and every folder in it, not crossing into what is bound in: path -> (mode,
    atime, mtime in ns)."""
    found = {}
    for folder, subfolders, _ in os.walk(SANDBOX_TEMP):
        info = os.lstat(folder)
        found[folder] = (info.st_mode & 0o7777, info.st_atime_ns, info.st_mtime_ns)
        subfolders[:] = [name for name in subfolders
                         if not os.path.ismount(os.path.join(folder, name))]
    return found


def wipe_temp(kept: dict[str, tuple[int, int, int]]) -> None:
    """Empty the private /tmp of all but the folders in ``kept`` and what is bound in, and
    give those folders back their mode and times, with no extended attribute: a worker
    could keep data in any of these for the next one. Each kept folder is first made
    readable again (a worker that made /tmp unreadable kept all of it through a wipe that
    could not list it); raises :class:`WipeFailed` where anything is left."""
    def leftovers() -> list[str]:
        return sorted(path for folder in kept for path in
                      (os.path.join(folder, name) for name in os.listdir(folder))
                      if path not in kept and not os.path.ismount(path))

    try:
        for folder in sorted(kept):  # parents first: each must be searchable for the next
            os.chmod(folder, 0o700)
        for path in leftovers():
            remove_tree(Path(path))
        left = leftovers()
    except OSError as error:
        raise WipeFailed(f"the sandbox's /tmp could not be emptied after a call ({error}); "
                         "the run stops, so that nothing left there reaches the next call"
                         ) from None
    if left:
        raise WipeFailed(f"the sandbox's /tmp kept {left[:3]} after a call; the run stops, so "
                         "that nothing left there reaches the next call")
    for folder, (mode, atime, mtime) in kept.items():
        with contextlib.suppress(OSError):
            for name in os.listxattr(folder, follow_symlinks=False):
                os.removexattr(folder, name, follow_symlinks=False)
            os.chmod(folder, mode)
            os.utime(folder, ns=(atime, mtime), follow_symlinks=False)


def kill_the_rest_of_the_sandbox() -> None:
    """SIGKILL every process of the sandbox's PID namespace that is not this zygote or the
    namespace's init, however deep a worker's leftovers nest (:meth:`Zygote.kill_orphans`
    reaps them one generation at a time, and a chain of 150 ``setsid`` shells outlived it).
    Only inside the sandbox: outside a PID namespace of its own, ``kill(-1)`` would reach
    every process of the user. Called by the zygote between calls, when no worker is
    running, and by a worker (sparing itself) after the fork that counted its prediction."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)


IPC_RMID = 0


def remove_ipc_objects() -> None:
    """Remove every System V shared memory segment, message queue and semaphore set of the
    sandbox's IPC namespace (``--unshare-ipc``: its own, alive as long as the zygote): a
    worker could keep data there for the next worker of the run, outside its state."""
    libc = ctypes.CDLL(None, use_errno=True)
    removers = {"shm": lambda i: libc.shmctl(i, IPC_RMID, None),
                "msg": lambda i: libc.msgctl(i, IPC_RMID, None),
                "sem": lambda i: libc.semctl(i, 0, IPC_RMID)}
    for kind, remove in removers.items():
        try:
            rows = Path("/proc/sysvipc", kind).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            remove(int(row.split()[1]))


def remove_tree(folder: Path) -> None:
    """``rm -rf folder`` for what a worker made: each folder is made searchable and writable
    before it is emptied (a worker's read-only folder stops a user without
    CAP_DAC_OVERRIDE), and the walk keeps its own stack (Python 3.11's rmtree recurses: a
    chain of 1,200 nested folders raised RecursionError). Raises OSError where something
    cannot be removed."""
    if not os.path.lexists(folder):
        return
    if os.path.islink(folder) or not os.path.isdir(folder):
        os.unlink(folder)
        return
    stack = [os.fspath(folder)]
    while stack:
        path = stack[-1]
        os.chmod(path, 0o700)
        deeper = []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    deeper.append(entry.path)
                else:
                    os.unlink(entry.path)
        if deeper:
            stack += deeper
        else:
            os.rmdir(path)
            stack.pop()


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every child this process has waited for, with theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class WipeFailed(Exception):
    """The private /tmp could not be emptied: the run must stop, or what is left in it would
    reach the next call."""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent``, read from /proc (Linux): the kernel's list of the
    main thread's children where it keeps one, else a scan of every process."""
    try:
        listed = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        return [int(pid) for pid in listed.split()]
    except OSError:
        pass
    return [pid for pid, its_parent in process_parents().items() if its_parent == parent]


def stat_fields(path: str | Path) -> list[str] | None:
    """The fields of a ``/proc`` ``stat`` file after the command name (``fields[0]`` is the
    state, ``fields[1]`` the parent pid, ``fields[11:13]`` user and system CPU ticks), or
    None when the process or thread ended before it was read."""
    try:
        stat = Path(path).read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def process_parents() -> dict[int, int]:
    """Every live process's parent pid, from ``/proc/PID/stat`` (Linux; a process that ends
    while it is read is left out)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(entry / "stat")) is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def warm_up() -> None:
    """One tiny training step, FLOP-counted and saved, so that what torch imports lazily on
    first use (the optimisers' torch._dynamo and sympy: about 800 modules, seconds) is
    imported here once, not in every worker. One thread only: no OpenMP pool exists when
    the zygote forks."""
    import io

    import torch

    from clbench.costs import FlopCounter

    torch.set_num_threads(1)
    net = torch.nn.Conv2d(1, 2, 3)
    inputs, labels = torch.zeros(2, 1, 5, 5), torch.zeros(2, dtype=torch.int64)
    for optimizer in (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5),
                      torch.optim.Adam(net.parameters())):
        with FlopCounter():
            loss = torch.nn.functional.cross_entropy(net(inputs).flatten(1), labels)
            loss.backward()
        optimizer.step()
    torch.save(net.state_dict(), io.BytesIO())


def main(argv: list[str]) -> None:
    control_fd, parent_pid = int(argv[0]), int(argv[1])
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid and os.getppid() != parent_pid:
        return  # the harness died before this line
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    # not dumpable (inherited by every worker): a worker runs as the zygote's user, and
    # without this could write into the zygote's memory through /proc/PID/mem, changing the
    # code every later worker of the run is forked with
    prctl(PR_SET_DUMPABLE, 0)
    keep_freed_memory()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[WORKER_FLAG] = "1"
    control = socket.socket(fileno=control_fd)
    config = json.loads(control.recv(65536) or b"{}")
    AGENT_PATHS[:] = config.get("agent_paths", [])
    PRELOAD[:] = config.get("preload", [])
    sys.path.extend(p for p in config.get("extra_paths", [])
                    if p not in sys.path and p not in AGENT_PATHS)
    # a SIGCHLD ignored in the harness would be inherited: the kernel would reap workers and
    # their children, and their CPU would reach no count (see Zygote.reap)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sandboxed = bool(config.get("sandboxed"))
    temp = SANDBOX_TEMP if sandboxed else Path(tempfile.mkdtemp(prefix="clbench-sealed-"))
    if sandboxed:
        global SANDBOX_FOLDERS
        SANDBOX_FOLDERS = sandbox_folders()
    zygote = Zygote(control, temp, sandboxed)
    signal.signal(signal.SIGTERM, zygote.stop)
    try:
        import torch  # noqa: F401  (what makes a worker start in milliseconds)

        import clbench  # noqa: F401
        import clbench.nets  # noqa: F401
        import clbench.quantize  # noqa: F401  (imported by built-in agents)
        import clbench.recipe  # noqa: F401
        import clbench.sealed.calls  # noqa: F401
        import clbench.training  # noqa: F401
        from clbench.sealed import seccomp
        warm_up()
        seccomp.install(seccomp.program(seccomp.HIDDEN_STORAGE,
                                        checks=seccomp.HIDDEN_STORAGE_CHECKS))
        zygote.reply({"ready": True})
        zygote.serve_forever()
    except (ConnectionError, SystemExit):
        pass  # the harness went away, or stopped this zygote while it was importing
    except OSError:
        traceback.print_exc()  # reaches the harness's stderr; it reports the exit
    except WipeFailed as error:
        print(f"clbench: {error}", file=sys.stderr)
    finally:
        zygote.shutdown()
    # Leave without the interpreter's teardown: with torch and torch._dynamo imported it
    # takes close to a second, which the harness would wait for at the end of every run.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
