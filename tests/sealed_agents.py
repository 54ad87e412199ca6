"""Agents that probe the sealed workers, for tests/test_sealed.py (module level, so a
worker can import them)."""

from __future__ import annotations

import atexit
import ctypes
import errno
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from agents_for_tests import ConstantZero

LEFTOVER_FILE = "clbench-probe-leftover"


class Quiet(ConstantZero):
    """Keeps nothing and answers 0, reporting ``figures``: the base of the probes below."""

    def __init__(self, device="cpu"):
        super().__init__(device)
        self.figures = {}

    def metrics(self):
        return self.figures


class Chatty(Quiet):
    """Prints without newlines, straight to fd 1, and at exit: none of it reaches the channel."""

    def learn(self, task):
        print("{not json", end="")
        os.write(1, b"\x00\x01 raw bytes on fd 1")
        sys.stderr.write("half a line on stderr")
        atexit.register(print, "goodbye from atexit", end="")

    def predict(self, x, task_id):
        print(f"predicting {task_id}", end="")
        return super().predict(x, task_id)


def _readable(path) -> bool:
    try:
        with open(path, "rb") as handle:
            return len(handle.read(16)) > 0
    except OSError:
        return False


class SandboxProbe(Quiet):
    """Reports, as its metrics, what a worker can reach."""

    def learn(self, task):
        from clbench.data import resolve_root
        from clbench.data.info import mnist5k_file

        tmp = Path("/tmp")
        figures = {
            "mnist5k_readable": _readable(str(mnist5k_file())),
            "debian_datasets_listed": _listing("/usr/share/datasets"),
            "data_root_listed": _listing(resolve_root()),
            "leftover_seen": (tmp / LEFTOVER_FILE).exists()
            or (Path(os.environ.get("TMPDIR", "/tmp")) / LEFTOVER_FILE).exists(),
            "parent_visible": Path(f"/proc/{os.environ['PROBE_HARNESS_PID']}").exists()
            if "PROBE_HARNESS_PID" in os.environ else None,
            "capabilities": _effective_capabilities(),
            "zygote_memory_writable": _writable(f"/proc/{os.getppid()}/mem"),
            "pid_1_memory_writable": _writable("/proc/1/mem"),
            "refused_calls": _refused_calls(),
            "zygote_counters_readable": [name for name in ("stat", "status", "sched")
                                         if _readable(f"/proc/1/{name}")],
            "page_files_open": [path for path in ("/proc/1/clear_refs", "/proc/kpageflags",
                                                  "/proc/kpagecount")
                                if _readable(path) or _opens_for_writing(path)],
            # opened for writing, never written: that alone changes nothing
            "sysctl_writable": [path for path in ("/proc/sys/kernel/core_pattern",
                                                  "/proc/sys/kernel/hostname",
                                                  "/proc/sys/kernel/msgmnb",
                                                  "/proc/sysrq-trigger")
                                if _opens_for_writing(path)],
            "harness_output_readable": any(_readable(f"/proc/{pid}/fd/{fd}") for pid in
                                           ("self", "1", str(os.getppid())) for fd in (1, 2)),
            "root_remountable": subprocess.run(
                ["mount", "-o", "remount,bind,rw", "/"], capture_output=True,
                check=False).returncode == 0,
        }
        for folder in {tmp, Path(os.environ.get("TMPDIR", "/tmp"))}:
            (folder / LEFTOVER_FILE).write_text("kept?")
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2).close()
            figures["network"] = True
        except OSError:
            figures["network"] = False
        try:
            (Path.home() / LEFTOVER_FILE).write_text("kept?")
            figures["home_writable"] = True
            (Path.home() / LEFTOVER_FILE).unlink()
        except OSError:
            figures["home_writable"] = False
        self.figures = figures


def _effective_capabilities() -> int:
    """The CapEff mask of this process (0: none; root outside a user namespace keeps all of
    them unless they are dropped)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return -1


def _writable(path) -> bool:
    try:
        with open(path, "r+b"):
            return True
    except OSError:
        return False


def _refused_calls() -> list[str]:
    """Which of the calls that would carry data to the next worker fail here: io_uring,
    evicting a page of a readable file, and setting PID 1's limits (to what they are)."""
    from clbench.sealed import seccomp

    libc = ctypes.CDLL(None, use_errno=True)
    numbers = seccomp._MACHINES.get(platform.machine(), (0, 0, {}))[2]
    attempts = {
        "io_uring_setup": lambda: libc.syscall(numbers["io_uring_setup"], 1,
                                               ctypes.create_string_buffer(120)) == 0
        or ctypes.get_errno() != errno.EPERM,
        "fadvise": lambda: _fadvise(sys.executable),
        "prlimit of PID 1": lambda: resource.prlimit(
            1, resource.RLIMIT_CORE, resource.prlimit(1, resource.RLIMIT_CORE)) or True,
    }
    refused = []
    for name, attempt in attempts.items():
        try:
            if not attempt():
                refused.append(name)
        except (OSError, KeyError):
            refused.append(name)
    return refused


def _fadvise(path) -> bool:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 4096, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(descriptor)


def _opens_for_writing(path) -> bool:
    """Whether ``path`` opens write-only (nothing is written: a sysctl acts on write)."""
    try:
        os.close(os.open(path, os.O_WRONLY))
        return True
    except OSError:
        return False


def _listing(folder) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


CHAIN_MARK = "clbench-chain-probe"
# one process of a chain: it starts the next one, deeper, in a new session, then sleeps
CHAIN = ("import os, sys, time\n"
         "depth = int(sys.argv[1])\n"
         "if depth and os.fork() == 0:\n"
         "    os.setsid()\n"
         "    os.execv(sys.executable, [sys.executable, '-S', '-c', os.environ['CHAIN'],\n"
         "                              str(depth - 1), sys.argv[2]])\n"
         "time.sleep(600)\n")


def _chain_processes() -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            count += entry.name.isdigit() and CHAIN_MARK.encode() in (
                entry / "cmdline").read_bytes()
        except OSError:
            pass
    return count


class LeavesADeepChain(Quiet):
    """Task 0's learn leaves ``depth`` nested processes behind, each in a session of its own
    (the zygote once killed one generation of leftovers per round, 20 rounds at most);
    every learn reports how many it finds running."""

    def __init__(self, device="cpu", depth=40):
        super().__init__(device)
        self.depth = depth

    def learn(self, task):
        if task.id == 0:
            subprocess.Popen([sys.executable, "-S", "-c", CHAIN, str(self.depth), CHAIN_MARK],
                             env={**os.environ, "CHAIN": CHAIN}, start_new_session=True)
            deadline = time.monotonic() + 30
            while _chain_processes() <= self.depth and time.monotonic() < deadline:
                time.sleep(0.05)
        self.figures = {"chain_processes": _chain_processes()}


class ExitsInLearn(Quiet):
    def learn(self, task):
        if task.id == 1:
            sys.exit(0)


class HardExitInLearn(Quiet):
    def learn(self, task):
        if task.id == 1:
            os._exit(3)


class DiesOfARealTimeSignal(Quiet):
    """Kills its own worker with a real-time signal (which has no name in signal.Signals)."""

    def learn(self, task):
        if task.id == 1:
            os.kill(os.getpid(), signal.SIGRTMIN + 6)


class Sleeper(Quiet):
    """From task ``sleep_from`` on, starts a detached child and sleeps in learn."""

    def __init__(self, device="cpu", sleep_from=1, seconds=600.0):
        super().__init__(device)
        self.sleep_from, self.seconds = sleep_from, seconds

    def learn(self, task):
        if task.id >= self.sleep_from:
            subprocess.Popen(["sleep", "600"], start_new_session=True)
            time.sleep(self.seconds)


class ClockDependent(Quiet):
    """Keeps a value that depends on the clock: its replay cannot reproduce it."""

    def __init__(self, device="cpu"):
        super().__init__(device)
        self.stamp = torch.zeros(1, dtype=torch.int64)

    def learn(self, task):
        self.stamp = torch.tensor([time.perf_counter_ns()])

    def state_dict(self):
        return {"stamp": self.stamp}

    def load_state_dict(self, state):
        self.stamp = state["stamp"]
