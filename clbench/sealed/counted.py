"""Keeping a FLOP-counted call where the counter can see it.

The FLOP counter is a torch dispatch mode, and dispatch modes are thread-local: an agent
that trains in a thread or process of its own reproduces its state exactly and is counted
as doing nothing. Two guards, for counted calls on the CPU (Linux):

- **no new processes** (:func:`refuse_new_processes`): a seccomp filter makes ``fork``,
  ``vfork`` and ``clone`` without ``CLONE_THREAD`` fail with ``EPERM`` and ``clone3`` with
  ``ENOSYS`` (so that new threads fall back to ``clone``), and refuses the other system-call
  ABIs of the machine (x32, i386). A filter lasts as long as its process: it is installed
  only in a one-call worker or in the fork that counts a prediction, never in the harness.
  x86_64 and aarch64 only; elsewhere processes are not refused.
- **work in other threads measured** (:class:`OffThreadWork`): the CPU seconds a call spends
  outside the thread that runs it and torch's thread pool; above :func:`uncounted_limit`
  the call fails.

Not covered: an agent that pops the counter's dispatch mode or rewrites clbench's own
functions inside its worker (it runs in that process; the README says so).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from clbench.sealed import seccomp
from clbench.sealed.calls import AgentCallError
from clbench.sealed.zygote import stat_fields

# CPU seconds outside the counted thread that a counted call may spend without failing: a
# floor, two clock ticks of /proc per pool thread (user and system time are each read to
# the tick), and a share of the counted thread's own CPU. Honest calls of the built-in
# agents measured 0 to 0.008 s, with 2 threads.
UNCOUNTED_FLOOR_SECONDS, UNCOUNTED_SHARE = 0.05, 0.01
_TICK = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def uncounted_limit(counted_seconds: float, threads: int) -> float:
    """The most CPU seconds a counted call may spend outside the thread the counter watches,
    where ``threads`` other threads were running when it began."""
    return UNCOUNTED_FLOOR_SECONDS + 2 * threads * _TICK + UNCOUNTED_SHARE * counted_seconds


def refuse_new_processes() -> bool:
    """Install the filter of this module's docstring in this process for the rest of its
    life; whether it was installed (False on other systems, or where the kernel refuses)."""
    return seccomp.install(seccomp.program({"fork": errno.EPERM, "vfork": errno.EPERM,
                                            "clone3": errno.ENOSYS}, processes=False))


def _thread_seconds(pid: int, me: int) -> dict[int, float]:
    """User + system CPU seconds of every thread of process ``pid`` but ``me``."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        if int(name) != me and (fields := stat_fields(f"/proc/{pid}/task/{name}/stat")):
            found[int(name)] = (int(fields[11]) + int(fields[12])) * _TICK
    return found


def _process_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OffThreadWork:
    """CPU seconds spent inside a ``with`` block by threads other than the one that entered
    it and those running then (threads started since, alive or ended). On exit,
    ``outside`` holds those seconds, ``counted`` the entering thread's own and ``limit``
    what :func:`uncounted_limit` allows, or all are None where ``/proc`` cannot be read.

    Entered before the agent's code is imported in a fresh worker, after starting torch's
    thread pool at the run's thread count, the threads running are this one and the pool's,
    whose work is the counted operators'. Two honest cases count as outside, false alarms
    this check accepts: threads added to the pool by an agent that raises torch's thread
    count (the harness sets it for the run), and torch's inter-op pool (``torch.jit.fork``
    of scripted code, whose operators the counter does see).
    """

    outside: float | None = None
    counted: float | None = None
    limit: float | None = None

    def __enter__(self) -> OffThreadWork:
        self.available = sys.platform.startswith("linux") and os.path.isdir("/proc/self/task")
        if not self.available:
            return self
        # one operator large enough to start every thread of torch's pool (at::parallel_for
        # hands out chunks of at least 32,768 elements)
        torch.ones(torch.get_num_threads() << 16).mul_(2)
        self.pid, self.me = os.getpid(), threading.get_native_id()
        self.threads = _thread_seconds(self.pid, self.me)
        self.start = time.thread_time(), _process_seconds()
        return self

    def __exit__(self, *_: Any) -> None:
        if not self.available:
            return
        counted = time.thread_time() - self.start[0]
        now = _thread_seconds(self.pid, self.me)
        pool = sum(now.get(tid, seconds) - seconds for tid, seconds in self.threads.items())
        self.outside = max(0.0, _process_seconds() - self.start[1] - counted - pool)
        self.counted = counted
        self.limit = uncounted_limit(counted, len(self.threads))


@contextlib.contextmanager
def counted_on_one_thread(count_flops: bool, device: torch.device, stage: str,
                          one_call_process: bool) -> Iterator[None]:
    """Around a FLOP-counted call on the CPU: refuse new processes where this process serves
    this one call (``one_call_process``: a worker, or the fork counting a prediction), and
    fail the call (``uncounted_work``, in ``stage``) where the agent worked in other threads.

    Enter it before the agent's module is imported, so that no thread of the agent's is
    running yet. Not checked on other devices, where autograd's backward runs in device
    threads that the counter does see."""
    if not count_flops or device.type != "cpu":
        yield
        return
    refused = one_call_process and refuse_new_processes()
    remedy = ("the counter sees only the calling thread's operators, so the FLOPs would be "
              "undercounted. Do the agent's work on the calling thread, or run without "
              "FLOPs (--no-flops: no FLOP count, no replay check)")
    try:
        with OffThreadWork() as work:
            yield
    except AgentCallError as error:
        if refused and "Operation not permitted" in str(error):
            raise AgentCallError(stage, RuntimeError(
                f"{error}: a FLOP-counted call may not start processes (fork, vfork and clone "
                f"of a process are refused); {remedy}"), "uncounted_work") from None
        raise
    if work.outside is not None and work.outside > work.limit:
        raise AgentCallError(stage, RuntimeError(
            f"{work.outside:.2f} s of CPU ran outside the thread the FLOP counter watches "
            f"({work.counted:.2f} s on it; at most {work.limit:.2f} s may), in threads the "
            "agent started (or torch's pool grew past the run's thread count: leave "
            f"torch.set_num_threads to the harness); {remedy}"), "uncounted_work")
