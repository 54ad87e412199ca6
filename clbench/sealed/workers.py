"""The harness's side of sealed workers: start the zygote, run one call per fresh worker.

:class:`WorkerPool` starts the zygote (:mod:`clbench.sealed.zygote`, under bubblewrap where
that works), asks it for one forked worker per call, sends the request over a socket of its
own, reads the reply (header + raw blobs; nothing is unpickled) and has the zygote reap the
worker and kill anything it left running. :class:`WorkerFailure` says how a call went wrong
in a machine-readable ``kind``. This module imports no torch: the command line launches a
run's zygote (:func:`start_early`) before it imports torch itself.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench.sealed import sandbox
from clbench.sealed.channel import ChannelClosed, MalformedMessage, receive_message, send_message

# Seconds a worker gets to exit by itself after it answered, before it is killed.
EXIT_GRACE_SECONDS = 5.0
# Seconds the harness waits, after a reap, for the rest of a worker's printed output.
FORWARD_GRACE_SECONDS = 5.0
# CPU seconds a call may spend outside the seconds it reports, on every core it may use
# (see check_seconds):
# - a floor, for starting the worker, importing the agent, building it and serialising its
#   state (benchmarks/untimed_cpu.py: built-in agents' calls used at most 0.13 s beyond
#   their seconds, on 2 CPU cores);
# - seconds per GB of the request and reply, for reading and writing them, loading and
#   saving the state and moving the arrays to the device (a review measured 3.5 to 9 s per
#   GB for states of 0.3 to 1 GB; an agent that pads its state for the allowance pays for it
#   in the storage figure);
# - a share of the call's CPU;
# - on CUDA, a margin for the device's start in each worker (a margin, not measured here).
UNTIMED_FLOOR_SECONDS, UNTIMED_SECONDS_PER_GB, UNTIMED_SHARE = 0.5, 10.0, 0.1
UNTIMED_CUDA_SECONDS = 5.0
# Seconds the harness waits for the reply of a prediction's FLOP-counted pass, which has
# ended before the worker's reply comes.
COUNTED_REPLY_SECONDS = 10.0


class WorkerFailure(Exception):
    """A call failed. ``kind``: ``agent_error`` (the agent raised or called sys.exit),
    ``contract`` (it returned what the contract forbids), ``worker_died`` (the worker ended
    without answering: os._exit, a crash, a kill), ``timeout`` (past ``--learn-timeout``),
    ``protocol`` (the reply did not follow the channel's format)."""

    def __init__(self, kind: str, stage: str, message: str, traceback: str | None = None,
                 task_id: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.stage, self.traceback, self.task_id = kind, stage, traceback, task_id


@dataclass
class CallResult:
    """A call's successful reply (``header``, ``blobs``), the kernel's CPU seconds of its
    timed part (``cpu_seconds``: the worker and all it started, less what the worker
    excused before the agent's code ran) and, for a prediction with FLOPs, the reply of the
    pass that counted them (``counted``)."""

    header: dict[str, Any]
    blobs: list[bytes]
    cpu_seconds: float
    counted: dict[str, Any] | None = None


class WorkerPool:
    """A zygote and the fresh workers it forks, one per :meth:`call`; use as a context."""

    def __init__(self, sandboxed: bool, hidden: Sequence[Path] = (),
                 extra_paths: Sequence[str] = (), files: Sequence[str] = (),
                 outputs: Sequence[str] = (), preload: Sequence[str] = ()) -> None:
        """``extra_paths``: import paths the workers need beyond the interpreter's own (the
        agent file's folder first); inside the sandbox they stay visible, read-only, as do
        ``files`` (the agent's file); ``outputs`` (the run's result file) are hidden there.

        Returns once the zygote is launched, not once it is ready: it imports torch and warms
        up (about 2 s of one core) while the caller goes on, e.g. loading the stream's data;
        the first :meth:`call` waits for it."""
        self.sandboxed = sandboxed
        self.arguments = _arguments(sandboxed, hidden, extra_paths, files, outputs, preload)
        agent_paths = [str(Path(file).parent) for file in files]
        self.ready = False
        self.reaped = False  # whether the worker of the call under way has been reaped
        self.start_seconds: list[float] = []
        self.control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-P", "-m", "clbench.sealed.zygote", str(child.fileno()),
                   "0" if sandboxed else str(os.getpid())]
        if sandboxed:
            command = sandbox.bwrap_command(hidden, [*extra_paths, *files], outputs) + command
        try:
            self.process = subprocess.Popen(
                command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=2,
                start_new_session=True)
        finally:
            child.close()
        try:
            self._send({"extra_paths": list(extra_paths), "agent_paths": agent_paths,
                        "preload": list(preload), "sandboxed": sandboxed})
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_agent(cls, target: str, data_roots: Iterable[str | os.PathLike | None],
                  outputs: Sequence[str | os.PathLike] = ()) -> WorkerPool:
        """The pool for ``target``'s workers (``module:Class`` or ``file.py:Class``),
        sandboxed where bubblewrap works, with every place of ``data_roots``' datasets and
        the run's ``outputs`` hidden: the one :func:`start_early` launched for the same
        arguments, else a new one."""
        global _early
        arguments = pool_arguments(target, data_roots, outputs)
        early, _early = _early, None
        if early is not None:
            if early.arguments == _arguments(*arguments):
                return early
            early.close()
        return cls(*arguments)

    def wait_ready(self) -> None:
        """Block until the zygote has imported what workers share and can fork them."""
        if not self.ready:
            self._receive()
            self.ready = True

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        socket.send_fds(self.control, [json.dumps(message).encode()], list(fds))

    def _receive(self) -> dict[str, Any]:
        data = self.control.recv(65536)
        if not data:
            code = self.process.wait()
            raise RuntimeError(f"the sealed-worker zygote exited (code {code}); its error "
                               "is printed above")
        return json.loads(data)

    def call(self, header: dict[str, Any], blobs: Sequence[bytes], stage: str,
             timeout: float | None = None) -> CallResult:
        """Run one call in a fresh worker; return its successful reply, or raise
        :class:`WorkerFailure` (the counted pass's failure first, as it ran first).

        The CPU seconds are the kernel's count for the worker and everything it started
        (the zygote's, which no worker can reach), less what the worker excused before the
        agent's code ran (see :func:`clbench.sealed.zygote.serve`)."""
        self.wait_ready()
        mine, theirs = socket.socketpair()
        printed, prints = socket.socketpair()
        counted_mine, counted_theirs = socket.socketpair()
        began = time.perf_counter()
        try:
            self._send({"op": "spawn"}, [theirs.fileno(), prints.fileno(),
                                         counted_theirs.fileno()])
        finally:
            for end in (theirs, prints, counted_theirs):
                end.close()
        forwarder = Forwarder(printed)
        self.reaped = False
        try:
            result = self._exchange(mine, header, blobs, stage, timeout)
            if header.get("op") == "predict" and header.get("count_flops"):
                result.counted = _counted_reply(counted_mine)
        finally:
            # unreaped (Ctrl-C or SIGTERM during the call), the worker runs on and holds its
            # end open until the pool closes: waiting for its last words would only delay the
            # stop (what it printed so far is still read)
            forwarder.finish(FORWARD_GRACE_SECONDS if self.reaped else 0.0)
            counted_mine.close()
        reply = result.header
        if isinstance(reply.get("started"), (int, float)):
            self.start_seconds.append(reply["started"] - began)
        for answer in (result.counted, reply):
            if answer is not None and answer.get("ok") is not True:
                raise WorkerFailure(str(answer.get("kind", "agent_error")),
                                    str(answer.get("stage", stage)), str(answer.get("message")),
                                    answer.get("traceback"), answer.get("task_id"))
        return result

    def _exchange(self, mine: socket.socket, header: dict[str, Any], blobs: Sequence[bytes],
                  stage: str, timeout: float | None) -> CallResult:
        """Send the request to the worker just spawned, read its reply and reap it."""
        try:
            pid = self._receive()["pid"]
            mine.settimeout(timeout)
            try:
                send_message(mine, header, blobs)
                interim = receive_message(mine)[0]
                excused = _excused_seconds(interim)
                if interim.get("counted_pid") is not None:
                    excused += self._reap_counted(interim["counted_pid"])
                    send_message(mine, {"go": True})
                reply, out = receive_message(mine)
            except TimeoutError:
                self._reap(pid, 0.0)
                raise WorkerFailure("timeout", stage, f"ran past the learn timeout of "
                                    f"{timeout:g} s; the worker was killed") from None
            except (ChannelClosed, BrokenPipeError, ConnectionResetError) as error:
                status = self._reap(pid, EXIT_GRACE_SECONDS)
                raise WorkerFailure("worker_died", stage,
                                    f"{_describe_exit(status)}; the channel: {error}") from None
            except MalformedMessage as error:
                self._reap(pid, 0.0)
                raise WorkerFailure("protocol", stage, f"the worker's reply is malformed: "
                                    f"{error}") from None
        finally:
            mine.close()
        status = self._reap(pid, EXIT_GRACE_SECONDS)
        return CallResult(reply, out, float(status["cpu_seconds"]) - excused)

    def _reap_counted(self, pid: Any) -> float:
        """Have the zygote reap the process that counted a prediction's FLOPs; its CPU."""
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise MalformedMessage(f"the counting process's pid is {pid!r}")
        self._send({"op": "reap_counted", "pid": pid})
        return float(self._receive()["cpu_seconds"])

    def _reap(self, pid: int, grace: float) -> dict[str, Any]:
        """Have the zygote reap worker ``pid`` (see :meth:`clbench.sealed.zygote.Zygote.reap`);
        ``reaped`` says, for the call under way, that it was."""
        self._send({"op": "reap", "pid": pid, "grace": grace})
        status = self._receive()
        self.reaped = True
        return status

    @property
    def median_start_seconds(self) -> float | None:
        return statistics.median(self.start_seconds) if self.start_seconds else None

    def close(self) -> None:
        """Stop the zygote: it kills its workers and removes its temp folder."""
        try:
            self._send({"op": "stop"})
        except OSError:
            pass
        self.control.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *_) -> None:
        self.close()


class Forwarder(threading.Thread):
    """Copies what a worker prints to this process's stderr as it comes.

    A worker's stdout and stderr are one end of a socket pair, never this process's own
    stderr: that is often a file (a log, pytest's capture), which a worker could open again
    through ``/proc/self/fd/2`` and read back what an earlier worker printed there, or seek
    to leave a number for the next one. A socket cannot be opened through ``/proc``, has no
    offset, and reading it gives nothing of what was written to it."""

    def __init__(self, source: socket.socket) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.start()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.source.recv(65536):
                while data:  # fd 2, wherever it points now (a redirect, a test's capture)
                    data = data[os.write(2, data):]

    def finish(self, grace: float) -> None:
        """Wait for the worker's last words: its end closes once the reap has killed the
        worker and whatever it left running (at most ``grace`` seconds more where something
        else holds it, e.g. a leftover of an unsandboxed worker)."""
        self.join(grace)
        with contextlib.suppress(OSError):
            self.source.shutdown(socket.SHUT_RDWR)
        self.join()
        self.source.close()


def worker_import_paths() -> list[str]:
    """This process's import path, less the current directory (a worker must not import
    from it: an ``agents/`` folder there would shadow the installed agents)."""
    here = os.getcwd()
    return [p for p in sys.path if p and os.path.abspath(p) != here]


def pool_arguments(target: str, data_roots: Iterable[str | os.PathLike | None],
                   outputs: Sequence[str | os.PathLike] = ()
                   ) -> tuple[bool, list[Path], list[str], list[str], list[str], list[str]]:
    """:class:`WorkerPool`'s arguments for ``target``: whether bubblewrap works, the dataset
    places to hide, the import paths (the agent file's folder first), the agent's file,
    the run's output files (absolute) and what workers import first (:func:`agent_imports`)."""
    usable, _ = sandbox.bwrap_status()
    hidden = sandbox.dataset_sources(data_roots) if usable else []
    module = target.rpartition(":")[0]
    own_file = [module] if module.endswith(".py") else []
    own_folder = [str(Path(file).parent) for file in own_file]
    return (usable, hidden, own_folder + worker_import_paths(), own_file,
            [os.path.abspath(output) for output in outputs], agent_imports(target))


def _arguments(sandboxed: bool, hidden: Sequence[Path], extra_paths: Sequence[str],
               files: Sequence[str], outputs: Sequence[str] = (),
               preload: Sequence[str] = ()) -> tuple:
    return (bool(sandboxed), tuple(map(str, hidden)), tuple(extra_paths), tuple(files),
            tuple(outputs), tuple(preload))


# The pool start_early launched, until WorkerPool.for_agent takes it (or closes it).
_early: WorkerPool | None = None


def start_early(target: str, data_roots: Iterable[str | os.PathLike | None],
                outputs: Sequence[str | os.PathLike] = ()) -> None:
    """Launch the zygote for ``target`` now, before this process imports torch, so that both
    import at once (about a second less of waiting at the start of a sealed ``clbench
    run``); :meth:`WorkerPool.for_agent` hands it out for the same arguments. One left
    unused is closed by :func:`discard_early` (and at exit)."""
    global _early
    discard_early()
    _early = WorkerPool(*pool_arguments(target, data_roots, outputs))


def discard_early() -> None:
    """Close the pool :func:`start_early` launched, if nothing took it."""
    global _early
    early, _early = _early, None
    if early is not None:
        early.close()


atexit.register(discard_early)


def untimed_allowance(cpu_seconds: float, request_bytes: int, device_type: str) -> float:
    """The CPU seconds a call may spend beyond what its reported seconds hold (see the
    constants above)."""
    return (UNTIMED_FLOOR_SECONDS + UNTIMED_SECONDS_PER_GB * request_bytes / 1e9
            + UNTIMED_SHARE * cpu_seconds + (UNTIMED_CUDA_SECONDS if device_type == "cuda"
                                             else 0.0))


def check_seconds(seconds: float | None, cpu_seconds: float, cores: int, stage: str,
                  request_bytes: int = 0, device_type: str = "cpu") -> None:
    """Fail a call whose reported wall ``seconds`` cannot hold the CPU time the kernel
    counted for it (``cpu_seconds``, from :meth:`WorkerPool.call`): in ``s`` wall seconds
    ``cores`` cores do at most ``cores * s`` seconds of work, and the rest of the call
    (worker start, request, imports, building the agent, its state) gets
    :func:`untimed_allowance`.

    The seconds are measured inside the worker, where the agent's code runs and can rewrite
    the clock or clbench's own functions; the CPU count cannot be reached from there. An
    agent can understate its seconds by at most the allowance (and by running on fewer
    cores than it may use); work on a GPU, which is not CPU time, is not bounded here."""
    if seconds is None:
        return
    limit = cores * seconds + untimed_allowance(cpu_seconds, request_bytes, device_type)
    if cpu_seconds > limit:
        raise WorkerFailure(
            "implausible_cost", stage,
            f"the worker reported {seconds:.3g} s for {stage} but used {cpu_seconds:.3g} s of "
            f"CPU, more than {cores} core(s) do in that time with the allowance for the rest "
            f"of the call ({limit:.3g} s): the agent's code changed how it is timed (e.g. "
            "time.perf_counter or clbench's functions), or worked outside the timed call "
            "(in its constructor, load_state_dict or state_dict, or in processes it left "
            "running). Imports at the top of an agent's file are not held against it; a "
            "library imported elsewhere is: import it at the top of the file")


def _excused_seconds(interim: dict[str, Any]) -> float:
    """The CPU seconds the worker excused before the agent's code ran, from the message it
    sends before its reply."""
    seconds = interim.get("excused_cpu_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise MalformedMessage(f"the untimed CPU seconds are {seconds!r}, not a number of "
                               "seconds")
    return float(seconds)


def _counted_reply(sock: socket.socket) -> dict[str, Any]:
    """The reply of a prediction's FLOP-counted pass, or a ``worker_died`` reply where it
    sent none (the pass ended before the worker's reply came)."""
    sock.settimeout(COUNTED_REPLY_SECONDS)
    try:
        reply, _ = receive_message(sock)
    except (ChannelClosed, MalformedMessage, OSError) as error:
        return {"ok": False, "kind": "worker_died", "stage": "predict (FLOP count)",
                "message": f"the fork counting the prediction's FLOPs ended without an "
                           f"answer ({error}): the agent called os._exit, or its process "
                           "ended"}
    if not isinstance(reply.get("ok"), bool):
        return {"ok": False, "kind": "protocol", "stage": "predict (FLOP count)",
                "message": f"the reply of the pass counting the prediction's FLOPs is "
                           f"malformed (keys {sorted(reply)[:6]})"}
    return reply


def agent_imports(target: str) -> list[str]:
    """The modules the agent's own code imports at its top level (in ``if`` and ``try``
    blocks too) from the environment. A worker imports them before any of the agent's code
    runs and excuses their CPU (scikit-learn takes 2 s to import, in every worker).

    The agent's code is its source file (a ``file.py:Class`` agent's, or a module agent's,
    found without importing it) and, followed from there, the files of its own tree that
    it imports (its folder's, or its top-level package's). A name is kept where it
    resolves, from the environment's import path, to somewhere neither inside that tree
    nor above it: importing it runs no code of the agent's (its own module, named through
    a package, once did, and set the CPU clock its excuse is measured by)."""
    source, own, package = _agent_source(target.rpartition(":")[0])
    if source is None:
        return []
    found: list[str] = []
    pending, seen = [source], {source}
    while pending and len(seen) <= 200:
        path = pending.pop(0)
        try:
            statements = list(ast.parse(path.read_text(), str(path)).body)
        except (OSError, SyntaxError, ValueError):
            continue
        while statements:
            node = statements.pop(0)
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [_absolute(node, path, own, package)]
            elif isinstance(node, (ast.If, ast.Try)):
                statements += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                               *(line for handler in getattr(node, "handlers", [])
                                 for line in handler.body)]
            for name in filter(None, names):
                mine = _own_file(name, own, package)
                if mine is not None and mine not in seen:
                    seen.add(mine)
                    pending.append(mine)
                elif mine is None and _from_the_environment(name, own):
                    found.append(name)
    return list(dict.fromkeys(found))


def _absolute(node: ast.ImportFrom, path: Path, own: Path, package: str | None) -> str | None:
    """The absolute name of a ``from`` import in file ``path`` of the agent's tree."""
    if node.level == 0:
        return node.module
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    try:
        parts = list(base.relative_to(own).parts)
    except ValueError:
        return None
    return ".".join([*([package] if package else []), *parts,
                     *([node.module] if node.module else [])]) or None


def _own_file(name: str, own: Path, package: str | None) -> Path | None:
    """The file of module ``name`` where it is in the agent's own tree, else None."""
    parts = name.split(".")
    if package is not None:
        if parts[0] != package:
            return None
        parts = parts[1:]
    base = own.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if parts and candidate.is_file():
            return candidate.resolve()
    return None


def _agent_source(module: str) -> tuple[Path | None, Path, str | None]:
    """The agent's source file, the root of its own tree (the file's folder, or its
    top-level package's) and that package's name (None for a file or a lone module),
    located without running any of it; the file is None where none is found."""
    if module.endswith(".py"):
        source = Path(module).resolve()
        return source, source.parent, None
    parts = module.split(".")
    spec = _spec(parts[0])
    if spec is None:
        return None, Path(), None
    if not spec.submodule_search_locations:  # a module of its own, beside others
        origin = Path(spec.origin or "").resolve()
        return (origin if origin.is_file() else None), origin.parent, None
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    return _own_file(module, root, parts[0]) if len(parts) > 1 else (
        root / "__init__.py"), root, parts[0]


def _spec(name: str) -> Any:
    """``importlib.util.find_spec`` of a top-level name (which imports nothing), or None."""
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _from_the_environment(name: str, own: Path) -> bool:
    """Whether ``name``'s top-level module resolves to a place outside the agent's tree
    ``own`` and not above it."""
    spec = _spec(name.partition(".")[0])
    if spec is None:
        return False
    places = [*(spec.submodule_search_locations or []),
              *([spec.origin] if spec.has_location and spec.origin else [])]
    for place in map(lambda p: Path(p).resolve(), places):
        if place == own or own in place.parents or place in own.parents:
            return False
    return True


def _describe_exit(status: dict[str, Any]) -> str:
    if status.get("signal") is not None:
        try:
            name = signal.Signals(status["signal"]).name
        except ValueError:  # a real-time signal: signal.Signals names none of them
            name = f"signal {status['signal']}"
        return (f"the worker was killed by {name} before it answered (a crash in the agent's "
                "code, or it ran out of memory)")
    return (f"the worker exited with code {status.get('exit')} before it answered (the "
            "agent called os._exit, or its process ended)")
