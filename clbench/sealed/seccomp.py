"""Seccomp filters: refuse chosen system calls in a process and every process it starts.

A filter (classic BPF, ``SECCOMP_MODE_FILTER``) lasts as long as its process and is
inherited by its forks; filters stack and cannot be removed. Each refuses the machine's
other system-call ABIs (x32, i386 through ``int 0x80``), whose numbers differ and would
otherwise let a refused call through. x86_64 and aarch64 only; elsewhere nothing is
installed and :func:`install` says so.

Two filters use it: :func:`clbench.sealed.counted.refuse_new_processes` (in a FLOP-counted
call) and :data:`HIDDEN_STORAGE` with :data:`HIDDEN_STORAGE_CHECKS` (in the zygote and so in
every worker).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import socket
import struct
import sys
from collections.abc import Mapping, Sequence

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_CLONE_THREAD = 0x00010000
# per machine: (audit arch, the x32 bit or None, system-call numbers)
_MACHINES = {
    "x86_64": (0xC000003E, 0x40000000, {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "mq_open": 240, "add_key": 248,
        "request_key": 249, "keyctl": 250, "socket": 41, "shmget": 29, "semget": 64,
        "msgget": 68, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "fadvise64": 221, "readahead": 187, "mincore": 27, "cachestat": 451, "preadv2": 327,
        "pwritev2": 328, "madvise": 28, "process_madvise": 440, "prlimit64": 302,
        "setpriority": 141, "ioprio_set": 251, "sched_setparam": 142,
        "sched_setscheduler": 144, "sched_setaffinity": 203, "sched_setattr": 314,
        "rt_sigaction": 13}),
    "aarch64": (0xC00000B7, None, {
        "clone": 220, "clone3": 435, "mq_open": 180, "add_key": 217, "request_key": 218,
        "keyctl": 219, "socket": 198, "msgget": 186, "semget": 190, "shmget": 194,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "fadvise64": 223, "readahead": 213, "mincore": 232, "cachestat": 451, "preadv2": 286,
        "pwritev2": 287, "madvise": 233, "process_madvise": 440, "prlimit64": 261,
        "setpriority": 140, "ioprio_set": 30, "sched_setparam": 118,
        "sched_setscheduler": 119, "sched_setaffinity": 122, "sched_setattr": 274,
        "rt_sigaction": 134}),
}

# A condition on one argument: (its index, the values it matches; None: every value but 0).
# A check is one condition, or a tuple of conditions that must all hold; a call is refused
# where any of its checks holds.
Condition = tuple[int, "tuple[int, ...] | None"]
Check = "Condition | tuple[Condition, ...]"
MADV_COLD, MADV_PAGEOUT = 20, 21
SIGCHLD = 17  # on x86_64 and aarch64 alike

# What would carry data from one call to the next, outside the state, and the reap cannot
# empty or reset; refused to the zygote and so to every worker:
# - keyrings (root's user keyring is shared by every process of the user, across runs),
#   POSIX message queues and System V IPC (kept by the sandbox's IPC namespace; System V
#   ids also count up, carrying a number even where the objects are removed);
# - io_uring, whose operations bypass the system-call checks below (it opened internet
#   sockets that ``socket`` refuses);
# - the page cache, shared by the whole machine: a worker could evict chosen pages of any
#   readable file (fadvise, madvise) and the next test which are cached (mincore,
#   cachestat, preadv2 with RWF_NOWAIT), one bit per page;
# - the zygote's own settings, which every later worker inherits: limits, priorities,
#   scheduling and CPU affinity may be set for the caller only (pid 0);
# - and one that hides work from the CPU count of a call: a process whose SIGCHLD is ignored
#   (or has SA_NOCLDWAIT) has its children reaped by the kernel, and their CPU time is added
#   to no process's count (getrusage's RUSAGE_CHILDREN), so SIGCHLD's action may be read but
#   not set.
HIDDEN_STORAGE = {name: errno.EPERM for name in (
    "add_key", "request_key", "keyctl", "mq_open", "shmget", "semget", "msgget",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fadvise64", "readahead",
    "mincore", "cachestat", "preadv2", "pwritev2", "process_madvise", "ioprio_set")}
HIDDEN_STORAGE_CHECKS: dict[str, list[Check]] = {
    # internet sockets: the sandbox has loopback only, but a closed TCP connection lingers
    # in TIME_WAIT (about 60 s) and in loopback's counters, both readable by the next worker
    "socket": [(0, (socket.AF_INET, socket.AF_INET6))],
    "madvise": [(2, (MADV_COLD, MADV_PAGEOUT))],
    "prlimit64": [(0, None)],
    "setpriority": [(0, None), (1, None)],  # PRIO_PROCESS of the caller only
    **{name: [(0, None)] for name in ("sched_setparam", "sched_setscheduler",
                                      "sched_setaffinity", "sched_setattr")},
    "rt_sigaction": [((0, (SIGCHLD,)), (1, None))],  # SIGCHLD, with a new action
}


def program(refused: Mapping[str, int], processes: bool = True,
            checks: Mapping[str, Sequence[Check]] | None = None) -> bytes | None:
    """The filter that makes each system call named in ``refused`` fail with its errno (one
    the machine lacks, such as ``fork`` on aarch64, is skipped), each named in ``checks``
    (skipped likewise) fail with ``EPERM`` where one of its arguments' low words is
    refused, and, with
    ``processes`` False, ``clone`` without ``CLONE_THREAD`` too; None on a machine this
    module does not know."""
    known = _MACHINES.get(platform.machine())
    if known is None or not sys.platform.startswith("linux"):
        return None
    arch, x32, numbers = known
    deny = _RET_ERRNO | errno.EPERM
    # (code, jump if true, jump if false, k); a jump skips that many instructions
    code = [(0x20, 0, 0, 4),                        # A = seccomp_data.arch
            (0x15, 1, 0, arch), (0x06, 0, 0, deny),  # another ABI: refused
            (0x20, 0, 0, 0)]                         # A = seccomp_data.nr
    if x32 is not None:
        code += [(0x35, 0, 1, x32), (0x06, 0, 0, deny)]  # x32 calls: refused
    for name, error in refused.items():
        if name in numbers:
            code += [(0x15, 0, 1, numbers[name]), (0x06, 0, 0, _RET_ERRNO | error)]
    for name, rules in (checks or {}).items():
        if name not in numbers:
            continue  # as for a refused call the machine lacks
        body = [instruction for rule in rules for instruction in _refuse_where(rule, deny)]
        body.append((0x06, 0, 0, _RET_ALLOW))
        # another call skips the block, with A still its number
        code += [(0x15, 0, len(body), numbers[name]), *body]
    if not processes:
        code += [(0x15, 0, 3, numbers["clone"]),   # clone: look at its flags
                 (0x20, 0, 0, 16),                 # A = low word of args[0]
                 (0x45, 1, 0, _CLONE_THREAD),      # a thread: allowed
                 (0x06, 0, 0, deny)]
    code.append((0x06, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


def _refuse_where(check: Check, deny: int) -> list[tuple[int, int, int, int]]:
    """Instructions that return ``deny`` where every condition of ``check`` holds, and
    otherwise go on past their end."""
    conditions = (check,) if isinstance(check[0], int) else check
    code = [(0x06, 0, 0, deny)]
    for index, values in reversed(conditions):  # built from the end: jumps skip what follows
        low, high = 16 + 8 * index, 20 + 8 * index  # offsets of args[index]'s two words
        if values is None:  # not 0: either word (a pointer's low word alone can be 0)
            test = [(0x20, 0, 0, low), (0x15, 0, 2, 0),
                    (0x20, 0, 0, high), (0x15, len(code), 0, 0)]  # both 0: it fails
        else:  # an int argument: its low word
            test = [(0x20, 0, 0, low),
                    *((0x15, len(values) - i, 0, value) for i, value in enumerate(values)),
                    (0x05, 0, 0, len(code))]  # none matched: it fails (jump always)
        code = [*test, *code]
    return code


def install(code: bytes | None) -> bool:
    """Install ``code`` (from :func:`program`) in this process for the rest of its life;
    whether it was installed (False where ``code`` is None or the kernel refuses)."""
    if code is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    instructions = ctypes.create_string_buffer(code, len(code))
    header = struct.pack("=HxxxxxxQ", len(code) // 8, ctypes.addressof(instructions))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                      ctypes.create_string_buffer(header, len(header)), 0, 0) == 0
