"""Seccomp filters: refuse chosen system calls in a process and every process it starts.

A filter (classic BPF, ``SECCOMP_MODE_FILTER``) lasts as long as its process and is
inherited by its forks; filters stack and cannot be removed. Each refuses the machine's
other system-call ABIs (x32, i386 through ``int 0x80``), whose numbers differ and would
otherwise let a refused call through. x86_64 and aarch64 only; elsewhere nothing is
installed and :func:`install` says so.

Two filters use it: :func:`clbench.sealed.counted.refuse_new_processes` (in a FLOP-counted
call) and :data:`HIDDEN_STORAGE` with :data:`INTERNET` (in the zygote and so in every
worker).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import socket
import struct
import sys
from collections.abc import Iterable, Mapping

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_CLONE_THREAD = 0x00010000
# per machine: (audit arch, the x32 bit or None, system-call numbers)
_MACHINES = {
    "x86_64": (0xC000003E, 0x40000000,
               {"fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "mq_open": 240,
                "add_key": 248, "request_key": 249, "keyctl": 250, "socket": 41,
                "shmget": 29, "semget": 64, "msgget": 68}),
    "aarch64": (0xC00000B7, None,
                {"clone": 220, "clone3": 435, "mq_open": 180, "add_key": 217,
                 "request_key": 218, "keyctl": 219, "socket": 198, "msgget": 186,
                 "semget": 190, "shmget": 194}),
}

# Storage that outlives a worker and is not a file: the kernel's keyrings (root's user
# keyring is shared by every process of the user, across runs), POSIX message queues and
# System V IPC objects (kept by the IPC namespace, which lives as long as the sandbox; the
# zygote also removes System V objects after every call, but their ids count up and so
# carried a number from one call to the next).
HIDDEN_STORAGE = {name: errno.EPERM for name in (
    "add_key", "request_key", "keyctl", "mq_open", "shmget", "semget", "msgget")}
# Internet sockets: the sandbox has loopback only, but a closed TCP connection lingers in
# TIME_WAIT (about 60 s) and in loopback's counters, both readable by the next worker.
INTERNET = (socket.AF_INET, socket.AF_INET6)


def program(refused: Mapping[str, int], processes: bool = True,
            socket_domains: Iterable[int] = ()) -> bytes | None:
    """The filter that makes each system call named in ``refused`` fail with its errno (one
    the machine lacks, such as ``fork`` on aarch64, is skipped), ``socket`` of one of the
    ``socket_domains`` fail with ``EPERM`` and, with ``processes`` False, ``clone`` without
    ``CLONE_THREAD`` too; None on a machine this module does not know."""
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
    domains = list(socket_domains)
    if domains:  # socket: look at its domain; A is still the call's number where it is not
        code += [(0x15, 0, 2 * len(domains) + 2, numbers["socket"]),
                 (0x20, 0, 0, 16)]                 # A = low word of args[0]
        for domain in domains:
            code += [(0x15, 0, 1, domain), (0x06, 0, 0, deny)]
        code.append((0x06, 0, 0, _RET_ALLOW))     # a socket of another domain: allowed
    if not processes:
        code += [(0x15, 0, 3, numbers["clone"]),   # clone: look at its flags
                 (0x20, 0, 0, 16),                 # A = low word of args[0]
                 (0x45, 1, 0, _CLONE_THREAD),      # a thread: allowed
                 (0x06, 0, 0, deny)]
    code.append((0x06, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


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
