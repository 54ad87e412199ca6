"""Checkpoints: what a run keeps beside its result file so that it can be resumed.

For a result file ``run.json`` the checkpoint is the folder ``run.json.ckpt/``:

- ``checkpoint.json`` (schema ``clbench.checkpoint/1``): the run's identity (env id and
  make() kwargs, agent canonical name and kwargs, seed, device, FLOPs and seal flags,
  ``eval_every`` (read as 1 where a checkpoint written before it lacks it), the versions of
  python, torch, torchvision, gymnasium, numpy and clbench) and, for the last finished-task
  counts, the state file, its SHA-256 and size, and the run's wall seconds up to that task;
- ``state-<n>.pt``: the serialised agent state after ``n`` finished tasks, exactly the bytes
  the next worker loads (``torch.load(..., weights_only=True)`` reads it).

The result itself is the record of the finished tasks; the environment's position follows
from the seed (``reset(seed=..., options={"start_task": n})``). Per finished task the harness
writes the new state file, then ``checkpoint.json`` listing it beside the previous one, then
the result, and only then removes the older state: a kill at any instant leaves a result
whose number of finished tasks is listed with its state file present. Every file is written
atomically with the user's normal file mode. A run that completes removes the folder (its
result is final, and no partial checkpoint remains for a later resume to misuse); a failed
or interrupted run keeps it.

While a run writes ``run.json`` it holds an exclusive ``flock`` on ``.run.json.lock`` beside
it (:func:`hold`): a second run of the same file, from a second sweep on the same results
folder or a second ``clbench run --out run.json``, is refused at once instead of rewriting
the result and wiping or interleaving the checkpoint under the first. The kernel drops the
lock when its holder dies, however it dies, so a killed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clbench.results import write_bytes_atomic, write_json_atomic

SCHEMA = "clbench.checkpoint/1"
INDEX = "checkpoint.json"
MAX_INDEX_BYTES = 2**20  # identity and two entries: a few kB
STATE_FILE = re.compile(r"state-[0-9]{6}\.pt")  # the only files an entry may name
# the fields of one state entry of checkpoint.json, and their types
ENTRY_TYPES = {"file": (str, type(None)), "sha256": (str, type(None)), "bytes": int,
               "wall_seconds": (int, float)}


class ResumeRefused(ValueError):
    """A run cannot be resumed as asked; the message names the reason and the remedy."""


class RunInProgress(RuntimeError):
    """Another live process is running the same result file; the message names it."""


def default_out(agent: str, env: str, seed: int) -> Path:
    """Where ``clbench run`` writes its result without ``--out``:
    ``runs/<agent>_<env>_s<seed>.json``."""
    return Path("runs") / (f"{agent.replace(':', '_').replace('/', '_')}_{env.split('/')[-1]}"
                           f"_s{seed}.json")


def folder_for(out: str | Path) -> Path:
    """The checkpoint folder of the result file ``out``: ``<out>.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def lock_for(out: str | Path) -> Path:
    """The lock file of the result file ``out``: ``.<name>.lock`` in its folder."""
    out = Path(out).absolute()
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def hold(out: str | Path) -> Iterator[None]:
    """Within the block, this process is the only run of the result file ``out``.

    Takes an exclusive ``flock`` on :func:`lock_for` ``(out)`` without waiting; when another
    process holds it, raises :class:`RunInProgress` naming that process (its pid and host,
    which it wrote into the lock file). The lock file is removed on leaving, still locked,
    if it is still the one this process locked; a process that opened it just before and
    then locks the removed file sees that the path no longer leads to it and tries again
    with a new one. The descriptor is closed on exec, so no program this process starts (the
    sealed workers' zygote, a sweep's pool processes) keeps the lock alive after it; only a
    plain fork of this process shares it. On NFS, Linux emulates ``flock`` with POSIX locks,
    which reach other hosts only where the mount supports them.
    """
    path = lock_for(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            descriptor, writable = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666), True
        except PermissionError:  # left behind by another user's killed run: lockable as it is
            descriptor, writable = os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            refusal = _refusal(out, path, descriptor) if _leads_to(path, descriptor) else None
            os.close(descriptor)
            if refusal:
                raise RunInProgress(refusal) from None
            continue  # its holder has just removed it: the path may lead to a free one
        if _leads_to(path, descriptor):
            break
        os.close(descriptor)
    try:
        if writable:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode(),
                      0)
        yield
    finally:
        if _leads_to(path, descriptor):  # not a lock file someone put in its place
            path.unlink(missing_ok=True)
        os.close(descriptor)


def check_not_held(out: str | Path) -> None:
    """Raise :class:`RunInProgress` now if another process holds ``out`` (see :func:`hold`);
    holds nothing itself, so a command can refuse before its slow start-up."""
    path = lock_for(out)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (or none readable): nothing holds it, or hold() will say
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunInProgress(_refusal(out, path, descriptor)) from None
    finally:
        os.close(descriptor)


def _leads_to(path: Path, descriptor: int) -> bool:
    """Whether ``path`` is the file open as ``descriptor``."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's
    return True


def _refusal(out: str | Path, path: Path, descriptor: int) -> str:
    """The message of :class:`RunInProgress` for ``out``, whose lock file ``path`` (open as
    ``descriptor``) names its holder ("process PID on HOST", or nothing yet)."""
    holder = os.pread(descriptor, 256, 0).decode("utf-8", "replace").strip()
    message = (f"{out} is being written by another run ({holder or 'a process starting'}); "
               "wait for it to end (or stop it) and run again: a second run of one file "
               "would overwrite its result and checkpoint")
    words = holder.split()
    if len(words) == 4 and words[1].isdigit() and words[3] == socket.gethostname() \
            and not _alive(int(words[1])):
        message += (f". Process {words[1]} has exited, so a process it forked still holds "
                    f"the lock: `fuser {path}` names it")
    return message


def first_difference(recorded: Any, wanted: Any, where: str = "") -> str | None:
    """The first field where two identities differ, as ``"field: a vs b"``, or None."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in sorted(set(recorded) | set(wanted)):
            field = f"{where}.{key}" if where else key
            if key not in recorded or key not in wanted:
                return (f"{field}: {_shown(recorded, key)} (checkpoint) vs "
                        f"{_shown(wanted, key)} (this run)")
            found = first_difference(recorded[key], wanted[key], field)
            if found:
                return found
        return None
    if recorded == wanted and type(recorded) is type(wanted):
        return None
    return f"{where}: {recorded!r} (checkpoint) vs {wanted!r} (this run)"


def _shown(mapping: dict, key: str) -> str:
    return repr(mapping[key]) if key in mapping else "not given"


class Checkpoint:
    """The checkpoint folder of one run (see the module docstring)."""

    def __init__(self, folder: Path, identity: dict[str, Any],
                 states: dict[int, dict[str, Any]]) -> None:
        self.folder, self.identity, self.states = folder, identity, states

    # ------------------------------------------------------------------ create, open
    @classmethod
    def start(cls, out: str | Path, identity: dict[str, Any]) -> Checkpoint:
        """A new checkpoint for a run starting at task 0; any earlier one is removed."""
        checkpoint = cls(folder_for(out), identity, {0: _entry(None, None, 0.0)})
        checkpoint.remove()
        checkpoint._write_index()
        return checkpoint

    @classmethod
    def open(cls, out: str | Path) -> Checkpoint | None:
        """The checkpoint beside ``out``, or None when there is none; a malformed one raises
        :class:`ResumeRefused` naming what is wrong."""
        folder = folder_for(out)
        index = folder / INDEX
        if not index.exists():
            return None
        try:
            raw = index.read_bytes()[:MAX_INDEX_BYTES + 1]
            if len(raw) > MAX_INDEX_BYTES:
                raise ValueError(f"larger than {MAX_INDEX_BYTES} bytes")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                raise ValueError(f"not a {SCHEMA} file")
            identity, entries = data["identity"], data["states"]
            if not isinstance(identity, dict) or not isinstance(entries, list):
                raise ValueError("identity or states of the wrong type")
            states = {}
            for entry in entries:
                done = entry["tasks_done"]
                if isinstance(done, bool) or not isinstance(done, int) or done < 0:
                    raise ValueError(f"tasks_done {done!r}")
                states[done] = {key: entry[key] for key in ENTRY_TYPES}
                for key, types in ENTRY_TYPES.items():
                    if isinstance(entry[key], bool) or not isinstance(entry[key], types):
                        raise ValueError(f"{key} {entry[key]!r} of state {done}")
                if entry["file"] is not None and not STATE_FILE.fullmatch(entry["file"]):
                    raise ValueError(f"state file name {entry['file'][:40]!r}")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
                RecursionError) as error:
            raise ResumeRefused(
                f"the checkpoint {index} is unreadable or malformed ({error}); remove "
                f"{folder} and run without --resume to start afresh") from None
        return cls(folder, identity, states)

    # ------------------------------------------------------------------ per task
    def record(self, tasks_done: int, state: bytes, wall_seconds: float) -> None:
        """Keep the state after ``tasks_done`` finished tasks (before the result says so)."""
        name = f"state-{tasks_done:06d}.pt"
        write_bytes_atomic(self.folder / name, state)
        self.states = {done: entry for done, entry in self.states.items()
                       if done == tasks_done - 1}
        self.states[tasks_done] = _entry(name, state, wall_seconds)
        self._write_index()

    def prune(self, tasks_done: int) -> None:
        """Remove every state file but the one after ``tasks_done`` tasks (called once the
        result says they are finished; a state a kill left unlisted goes too)."""
        keep = self.states[tasks_done]["file"]
        for path in self.folder.glob("state-*.pt"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def state(self, tasks_done: int) -> tuple[bytes | None, float]:
        """The state after ``tasks_done`` finished tasks (None before the first) and the wall
        seconds up to then; refuses when it is not listed or not the bytes recorded."""
        entry = self.states.get(tasks_done)
        if entry is None:
            raise ResumeRefused(
                f"the checkpoint {self.folder} holds the state after "
                f"{' or '.join(map(str, sorted(self.states))) or 'no'} finished tasks, the "
                f"result {tasks_done}: they are not of one run; run without --resume to "
                "start afresh")
        if entry["file"] is None:
            return None, float(entry["wall_seconds"])
        path = self.folder / entry["file"]
        try:
            blob = path.read_bytes()
        except OSError as error:
            raise ResumeRefused(f"cannot read the checkpoint's state {path} "
                                f"({error.strerror or error}); run without --resume to start "
                                "afresh") from None
        found = hashlib.sha256(blob).hexdigest()
        if found != entry["sha256"] or len(blob) != entry["bytes"]:
            raise ResumeRefused(
                f"the checkpoint's state {path} is not the one recorded (SHA-256 {found}, "
                f"{len(blob)} bytes; recorded {entry['sha256']}, {entry['bytes']} bytes); run "
                "without --resume to start afresh")
        return blob, float(entry["wall_seconds"])

    def remove(self) -> None:
        """Remove the folder (a completed run, or a fresh start over an old checkpoint)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _write_index(self) -> None:
        write_json_atomic(self.folder / INDEX, {
            "schema": SCHEMA, "identity": self.identity,
            "states": [{"tasks_done": done, **entry} for done, entry in
                       sorted(self.states.items())]})


def _entry(file: str | None, state: bytes | None, wall_seconds: float) -> dict[str, Any]:
    return {"file": file, "sha256": None if state is None else hashlib.sha256(state).hexdigest(),
            "bytes": 0 if state is None else len(state), "wall_seconds": wall_seconds}
