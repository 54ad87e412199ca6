"""Agents that try to cheat the benchmark, one per kind of cheat (issue 10), for the tests.

Each learns like ``naive`` and adds one cheat. Where the cheat cannot work it falls back to
naive's honest behaviour (or stops with an error that says what went missing), so a sealed
run of it must give exactly naive's accuracy matrix, fail, or show in ``metrics()`` that
the attempt was blocked. Run unsealed, each cheat works: the tests check that too, so that
a test of the seal cannot pass because the cheat itself was broken.

They are loaded by file path (``adversaries.py:Class``), as a user's own agent file is.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gc
import gzip
import hashlib
import io
import json
import os
import platform
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from baselines.naive import Naive
from clbench.data import load_dataset
from clbench.nets import reference_net
from clbench.tasks import Task
from clbench.training import minibatches, predict_batched


class _KnowsItsTasks(Naive):
    """Naive that also keeps each task's positive classes (small, honest metadata)."""

    def __init__(self, device="cpu", **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.positives: list[list[int]] = []

    def learn(self, task: Task) -> None:
        super().learn(task)
        self.positives.append(list(task.spec.positive))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "positives": self.positives}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.positives = [list(p) for p in state["positives"]]

    def _labels_from_digits(self, x: torch.Tensor, task_id: int, images: torch.Tensor,
                            digits: torch.Tensor) -> torch.Tensor | None:
        """Each query's label read off a labelled copy of the images; None if one is missing."""
        lookup = {image.numpy().tobytes(): int(d) for image, d in zip(images, digits, strict=True)}
        found = [lookup.get(image.cpu().numpy().tobytes()) for image in x]
        if any(digit is None for digit in found):
            return None
        return torch.tensor([int(d in self.positives[task_id]) for d in found])


# (a) ------------------------------------------------------------------------------------------
class ReadsTestLabelsFromDataset(_KnowsItsTasks):
    """``predict`` looks its query images up in the test split ``load_dataset`` hands out."""

    def predict(self, x, task_id):
        try:
            test = load_dataset(self.datasets[task_id], train=False)
        except Exception:  # the files are hidden: answer honestly
            return super().predict(x, task_id)
        stolen = self._labels_from_digits(x, task_id, test.images.cpu(), test.labels.cpu())
        return super().predict(x, task_id) if stolen is None else stolen


# (b) ------------------------------------------------------------------------------------------
def _objects_holding_query_labels():
    """Every object reachable from this call stack or the garbage collector that looks like
    the environment (it holds the labels of the current queries)."""
    frame = sys._getframe(1)
    while frame is not None:
        yield from frame.f_locals.values()
        frame = frame.f_back
    yield from gc.get_objects()


class WalksTheStackToTheEnv(_KnowsItsTasks):
    """``predict`` finds the env through the call stack or ``gc`` and reads its query labels."""

    def predict(self, x, task_id):
        for thing in _objects_holding_query_labels():
            try:
                env = getattr(thing, "unwrapped", thing)
                labels, ids = env._query_labels, env._query_ids
            except Exception:
                continue
            if torch.is_tensor(labels) and torch.is_tensor(ids):
                mine = labels[ids == task_id]
                if len(mine) == len(x):
                    return mine.clone()
        return super().predict(x, task_id)


# (c) ------------------------------------------------------------------------------------------
def cache_folders(name: str) -> list[Path]:
    """Where the disk cache goes: the temp folder and torch hub's folder."""
    return [Path(tempfile.gettempdir()) / name, Path(torch.hub.get_dir()) / name]


class CachesWeightsOnDisk(Naive):
    """Writes its net to a temp folder and torch hub's folder in ``learn``; keeps only the
    number of tasks in its state and reads the net back from disk in ``predict``."""

    def __init__(self, device="cpu", cache_name="clbench-adversary-cache", **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.cache_name = cache_name

    def learn(self, task):
        if self.net is None and self.datasets:  # a fresh agent: bring the net back
            self.net = self._read_cache()
        super().learn(task)
        blob = io.BytesIO()
        torch.save({"shape": list(self.net.input_shape), "heads": len(self.net.heads),
                    "net": self.net.state_dict()}, blob)
        self._store(blob.getvalue())

    def _store(self, blob: bytes) -> None:
        for folder in cache_folders(self.cache_name):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "net.pt").write_bytes(blob)
            except OSError:
                pass

    def _load(self) -> bytes:
        for folder in cache_folders(self.cache_name):
            path = folder / "net.pt"
            if path.exists():
                return path.read_bytes()
        raise FileNotFoundError(f"the disk cache is gone from {cache_folders(self.cache_name)}")

    def _read_cache(self):
        saved = torch.load(io.BytesIO(self._load()), weights_only=True)
        net = Naive(self.device)._ensure_net(saved["shape"])
        for _ in range(saved["heads"]):
            net.add_head()
        net.load_state_dict(saved["net"])
        return net

    def predict(self, x, task_id):
        if self.net is None:
            self.net = self._read_cache()
        return super().predict(x, task_id)

    def state_dict(self):
        return {"datasets": list(self.datasets)}

    def load_state_dict(self, state):
        self.datasets = list(state["datasets"])


class CachesWeightsInSharedMemory(CachesWeightsOnDisk):
    """The same cheat with a System V shared memory segment as the cache: no folder holds
    it, and it lives as long as its IPC namespace (the sandbox's)."""

    WHERE, SIZE = "shared memory", 1 << 22
    IPC_CREAT = 0o1000

    def _shmid(self, create: bool) -> int:
        """The segment's id (negative where there is none), from a key of the cache name."""
        key = zlib.crc32(self.cache_name.encode()) & 0x7FFFFFFF
        return ctypes.CDLL(None).shmget(key, self.SIZE,
                                        (self.IPC_CREAT if create else 0) | 0o600)

    def _segment(self, create: bool):
        """The segment as a writable byte array, or None where there is none."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        shmid = self._shmid(create)
        if shmid < 0:
            return None
        address = libc.shmat(shmid, None, 0)
        return (ctypes.c_char * self.SIZE).from_address(address)

    def _store(self, blob: bytes) -> None:
        segment = self._segment(create=True)
        if segment is not None:  # else refused: nothing to bring back in the next call
            segment[: 8 + len(blob)] = len(blob).to_bytes(8, "little") + blob

    def _load(self) -> bytes:
        segment = self._segment(create=False)
        size = int.from_bytes(segment[:8], "little") if segment is not None else 0
        if size == 0:
            raise FileNotFoundError(f"the {self.WHERE} cache is gone")
        return bytes(segment[8: 8 + size])

    def remove(self) -> None:
        """Remove the segment (a test's clean-up where the cheat worked, outside a sandbox)."""
        shmid = self._shmid(create=False)
        if shmid >= 0:
            ctypes.CDLL(None).shmctl(shmid, 0, None)


class _ChunkedCache(CachesWeightsOnDisk):
    """The cheat with a cache that takes the net in chunks of at most ``CHUNK`` bytes,
    chunk ``i`` under the name ``f"{cache_name}-{i}"``."""

    CHUNK = 8192

    def _store(self, blob: bytes) -> None:
        self.remove()
        for i in range(0, len(blob), self.CHUNK):
            if not self._put(f"{self.cache_name}-{i // self.CHUNK}", blob[i: i + self.CHUNK]):
                return  # refused: nothing to bring back in the next call

    def _load(self) -> bytes:
        chunks = []
        while (chunk := self._get(f"{self.cache_name}-{len(chunks)}")) is not None:
            chunks.append(chunk)
        if not chunks:
            raise FileNotFoundError(f"the {self.WHERE} cache is gone")
        return b"".join(chunks)

    def remove(self) -> None:
        """Remove every chunk (before a new net, and a test's clean-up where the cheat
        worked, outside a sandbox)."""
        index = 0
        while self._drop(f"{self.cache_name}-{index}"):
            index += 1


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


class CachesWeightsInTheKeyring(_ChunkedCache):
    """The cheat with the kernel's user keyring as the cache: it outlives every process of
    the user (root may keep 25 MB there, other users 20 kB: less than the net)."""

    WHERE, CHUNK = "keyring", 32_000
    USER_KEYRING, KEYCTL_UNLINK, KEYCTL_SEARCH, KEYCTL_READ = -4, 9, 10, 11
    SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl

    def _keyctl(self, *args) -> int:
        return _libc().syscall(ctypes.c_long(self.SYSCALLS[platform.machine()][1]),
                               *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))

    def _put(self, name: str, chunk: bytes) -> bool:
        add_key = self.SYSCALLS[platform.machine()][0]
        return _libc().syscall(ctypes.c_long(add_key), b"user", name.encode(), chunk,
                               ctypes.c_long(len(chunk)), ctypes.c_long(self.USER_KEYRING)) >= 0

    def _get(self, name: str) -> bytes | None:
        key = self._keyctl(self.KEYCTL_SEARCH, self.USER_KEYRING, b"user", name.encode(), 0)
        if key < 0:
            return None
        buffer = ctypes.create_string_buffer(self.CHUNK)
        size = self._keyctl(self.KEYCTL_READ, key, buffer, self.CHUNK)
        return buffer.raw[:size] if size >= 0 else None

    def _drop(self, name: str) -> bool:
        key = self._keyctl(self.KEYCTL_SEARCH, self.USER_KEYRING, b"user", name.encode(), 0)
        return key >= 0 and self._keyctl(self.KEYCTL_UNLINK, key, self.USER_KEYRING) == 0


class CachesWeightsInSystemVMessages(_ChunkedCache):
    """The cheat with System V message queues as the cache, one chunk per queue keyed by its
    name: like shared memory, they live as long as their IPC namespace (the sandbox's)."""

    WHERE, CHUNK = "message", 8192  # msgmax, the largest System V message by default
    IPC_CREAT, IPC_NOWAIT, IPC_RMID = 0o1000, 0o4000, 0

    class Message(ctypes.Structure):
        _fields_ = [("type", ctypes.c_long), ("text", ctypes.c_char * 8192)]

    def _queue(self, name: str, create: bool) -> int:
        key = zlib.crc32(name.encode()) & 0x7FFFFFFF
        return _libc().msgget(key, (self.IPC_CREAT if create else 0) | 0o600)

    def _put(self, name: str, chunk: bytes) -> bool:
        queue = self._queue(name, create=True)
        message = self.Message(1)
        ctypes.memmove(ctypes.addressof(message) + self.Message.text.offset, chunk, len(chunk))
        return queue >= 0 and _libc().msgsnd(queue, ctypes.byref(message), len(chunk),
                                             self.IPC_NOWAIT) == 0

    def _get(self, name: str) -> bytes | None:
        queue = self._queue(name, create=False)
        if queue < 0:
            return None
        message = self.Message()
        size = _libc().msgrcv(queue, ctypes.byref(message), self.CHUNK, 0, self.IPC_NOWAIT)
        if size < 0:
            return None
        chunk = ctypes.string_at(ctypes.addressof(message) + self.Message.text.offset, size)
        _libc().msgsnd(queue, ctypes.byref(message), size, self.IPC_NOWAIT)  # put it back
        return chunk

    def _drop(self, name: str) -> bool:
        queue = self._queue(name, create=False)
        return queue >= 0 and _libc().msgctl(queue, self.IPC_RMID, None) == 0


class CachesWeightsInTempsAttributes(_ChunkedCache):
    """The cheat with the extended attributes of /tmp itself as the cache: the wipe after
    every call emptied /tmp but kept the folder's own attributes (and mode and times)."""

    WHERE, CHUNK = "extended attribute", 60_000  # an attribute's value holds at most 64 kB
    FOLDER = "/tmp"

    def _put(self, name: str, chunk: bytes) -> bool:
        try:
            os.setxattr(self.FOLDER, f"user.{name}", chunk)
            return True
        except OSError:
            return False

    def _get(self, name: str) -> bytes | None:
        try:
            return os.getxattr(self.FOLDER, f"user.{name}")
        except OSError:
            return None

    def _drop(self, name: str) -> bool:
        try:
            os.removexattr(self.FOLDER, f"user.{name}")
            return True
        except OSError:
            return False


class LocksTheTempFolder(CachesWeightsOnDisk):
    """The disk cheat in a file of /tmp itself, then /tmp made writable and searchable but
    not readable (again on every read): the wipe after a call could not list /tmp, removed
    nothing, and put the folder's mode back. Only ever in the sandbox's /tmp (never a
    machine's)."""

    def _path(self) -> Path:
        return Path("/tmp", f"{self.cache_name}.pt")

    def _store(self, blob: bytes) -> None:
        if b"clbench.sealed.zygote" not in _pid_1_command():
            return  # not in a sandbox: the cheat would lock the machine's /tmp
        with contextlib.suppress(OSError):
            os.chmod("/tmp", 0o1777)
            self._path().write_bytes(blob)
            os.chmod("/tmp", 0o300)

    def _load(self) -> bytes:
        try:
            blob = self._path().read_bytes()
        except OSError:
            raise FileNotFoundError("the locked cache is gone") from None
        os.chmod("/tmp", 0o300)
        return blob


def _pid_1_command() -> bytes:
    try:
        return Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return b""


class PredictsFromTheCountedPass(Naive):
    """A prediction whose FLOPs are counted runs twice, counted then timed: this one keeps
    its labels in /tmp for the other pass, which then computes nothing and says so on
    stderr (a timed pass faster than the work it was counted for)."""

    MARK = "took the labels of the other pass"

    def __init__(self, device="cpu", cache_name="clbench-adversary-cache", **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.cache_name = cache_name

    def predict(self, x, task_id):
        folder = Path("/tmp", self.cache_name)
        path = folder / f"{hashlib.sha256(x.cpu().numpy().tobytes()).hexdigest()}.pt"
        if path.exists():
            print(self.MARK, file=sys.stderr, flush=True)
            return torch.load(path)
        labels = super().predict(x, task_id)
        with contextlib.suppress(OSError):
            folder.mkdir(exist_ok=True)
            torch.save(labels, path)
        return labels


class _MessageQueueAttributes(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("max_messages", ctypes.c_long),
                ("message_size", ctypes.c_long), ("current", ctypes.c_long),
                ("reserved", ctypes.c_long * 4)]


class CachesWeightsInAMessageQueue(_ChunkedCache):
    """The cheat with POSIX message queues as the cache, one chunk per queue: they live as
    long as their IPC namespace (the sandbox's), and no file names them there."""

    WHERE, CHUNK = "message queue", 8192  # the largest message a user may send by default
    O_RDWR, O_CREAT, O_NONBLOCK = 0o2, 0o100, 0o4000

    def _open(self, name: str, flags: int) -> int:
        one = _MessageQueueAttributes(0, 1, self.CHUNK, 0)
        return _libc().mq_open(f"/{name}".encode(), self.O_RDWR | self.O_NONBLOCK | flags,
                               0o600, ctypes.byref(one))

    def _put(self, name: str, chunk: bytes) -> bool:
        queue = self._open(name, self.O_CREAT)
        if queue < 0:
            return False
        sent = _libc().mq_send(queue, chunk, len(chunk), 0) == 0
        _libc().mq_close(queue)
        return sent

    def _get(self, name: str) -> bytes | None:
        queue = self._open(name, 0)
        if queue < 0:
            return None
        buffer = ctypes.create_string_buffer(self.CHUNK)
        size = _libc().mq_receive(queue, buffer, self.CHUNK, None)
        chunk = buffer.raw[:size] if size >= 0 else None
        if chunk is not None:  # put it back for the next reader
            _libc().mq_send(queue, chunk, len(chunk), 0)
        _libc().mq_close(queue)
        return chunk

    def _drop(self, name: str) -> bool:
        return _libc().mq_unlink(f"/{name}".encode()) == 0


class CachesWeightsInTheSandboxInit(CachesWeightsOnDisk):
    """The cheat with the memory of the sandbox's PID 1 as the cache, written and read
    through ``/proc/1/mem`` at the low end of its stack, far below what it uses. bwrap's
    reaper was that process: it ran as the workers' user, could be traced, and outlived
    every worker. Only ever where PID 1 is bwrap or a clbench zygote (never a machine's init).
    """

    WHERE = "sandbox init"

    def _stack(self) -> int | None:
        """The lowest address of PID 1's stack, where it is a sandbox's process."""
        command = _pid_1_command()
        if not (command.startswith(b"bwrap") or b"clbench.sealed.zygote" in command):
            return None
        try:
            for line in Path("/proc/1/maps").read_text().splitlines():
                if line.endswith("[stack]"):
                    return int(line.split("-")[0], 16)
        except OSError:
            pass
        return None

    def _store(self, blob: bytes) -> None:
        start = self._stack()
        try:
            with open("/proc/1/mem", "r+b") as memory:
                memory.seek(start)
                memory.write(len(blob).to_bytes(8, "little") + blob)
        except (OSError, TypeError):
            pass  # not in a sandbox, or refused

    def _load(self) -> bytes:
        start = self._stack()
        try:
            with open("/proc/1/mem", "rb") as memory:
                memory.seek(start)
                size = int.from_bytes(memory.read(8), "little")
                if 0 < size < 1 << 20:
                    return memory.read(size)
        except (OSError, TypeError):
            pass
        raise FileNotFoundError(f"the {self.WHERE} cache is gone")


class ReadsItsPrintsBack(CachesWeightsOnDisk):
    """The cheat with the harness's stderr as the cache: ``learn`` prints the net, and the
    next call reads it back through ``/proc/self/fd/2`` where stderr is a file (a log,
    pytest's capture), which a worker's stderr was."""

    WHERE = "printed"
    MARK = b"clbench-adversary-net "

    def __init__(self, device="cpu", log="", **kwargs) -> None:
        """``log``: a file to read the prints back from instead (the harness's log, found
        by its path)."""
        super().__init__(device, **kwargs)
        self.log = log

    def _store(self, blob: bytes) -> None:
        line = self.MARK + self.cache_name.encode() + b" " + base64.b64encode(blob) + b"\n"
        sys.stderr.flush()
        os.write(2, line)

    def _load(self) -> bytes:
        try:
            if self.log or stat.S_ISREG(os.fstat(2).st_mode):  # never a terminal: it waits
                mark = self.MARK + self.cache_name.encode() + b" "
                lines = Path(self.log or "/proc/self/fd/2").read_bytes().splitlines()
                for line in reversed(lines):
                    if line.startswith(mark):
                        return base64.b64decode(line[len(mark):])
        except OSError:
            pass
        raise FileNotFoundError(f"the {self.WHERE} cache is gone")


class ReadsItsOwnResultFile(Naive):
    """Reads the run's result file, rewritten after every task with the accuracy matrix so
    far (test-set accuracy to tune on), and lists its checkpoint folder; ``metrics()`` says
    how many rows it saw (-1: none readable) and whether the folder could be listed."""

    def __init__(self, device="cpu", watch="", **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.watch, self.rows_seen, self.checkpoint_listed = watch, -1, False

    def learn(self, task):
        try:
            self.rows_seen = len(json.loads(Path(self.watch).read_text())["accuracy"])
        except (OSError, ValueError, KeyError):
            self.rows_seen = -1
        self.checkpoint_listed = bool(_listed(Path(self.watch + ".ckpt")))
        super().learn(task)

    def metrics(self):
        return {**super().metrics(), "rows_seen": self.rows_seen,
                "checkpoint_listed": self.checkpoint_listed}


def _listed(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


# (d) ------------------------------------------------------------------------------------------
class RetrainsFromDatasetFiles(Naive):
    """Keeps only task names; ``predict`` re-derives each task's net from the training split
    that ``load_dataset`` hands out (free replay, never counted as storage)."""

    def __init__(self, device="cpu", **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.names: list[str] = []

    def learn(self, task):
        self.names.append(task.name)

    def predict(self, x, task_id):
        dataset, classes = self.names[task_id].split(":")
        positive, negative = ([int(c) for c in side.split(",")] for side in classes.split("|"))
        train = load_dataset(dataset, train=True)  # hidden in a sealed worker: this raises
        keep = torch.isin(train.labels, torch.tensor(positive + negative)).nonzero()[:, 0]
        keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))[:400]]
        images = train.images[keep].cpu()
        labels = torch.isin(train.labels[keep], torch.tensor(positive)).long().cpu()
        net = reference_net(images.shape[1:])
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
        with torch.enable_grad():  # the harness calls predict under no_grad
            for _ in range(3):
                for inputs, targets in minibatches(images, labels, dataset, 32):
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(net(inputs), targets).backward()
                    optimizer.step()
        return predict_batched(net.eval(), x.cpu(), dataset)

    def state_dict(self):
        return {"names": list(self.names)}

    def load_state_dict(self, state):
        self.names = list(state["names"])


# (e) ------------------------------------------------------------------------------------------
_KEPT: dict[str, dict] = {}


class KeepsWeightsInAGlobal(Naive):
    """Keeps its net in a module global and out of its state on every task but ``last_task``."""

    def __init__(self, device="cpu", last_task=1, **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.last_task = last_task

    def state_dict(self):
        state = super().state_dict()
        if len(self.datasets) - 1 == self.last_task:
            return state
        _KEPT["state"] = state
        return {"datasets": list(self.datasets)}

    def load_state_dict(self, state):
        if "net" not in state and state["datasets"]:
            if "state" not in _KEPT:
                raise RuntimeError("the weights kept in the module global are gone")
            state = _KEPT["state"]
        super().load_state_dict(state)


# (f) ------------------------------------------------------------------------------------------
class ReplaysFromAClassAttribute(Naive):
    """Keeps every task's training data in a class attribute and replays it inside ``learn``
    only: its state (naive's) never counts the buffer."""

    buffer: list[Task] = []

    def learn(self, task):
        super().learn(task)
        replay = type(self).buffer
        if replay:
            optimizer = torch.optim.SGD(self.net.parameters(), lr=self.recipe.lr,
                                        momentum=self.recipe.momentum)
            for old in replay:
                for inputs, targets in minibatches(old.x_train, old.y_train, old.dataset, 64):
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(self.net(inputs, old.id), targets).backward()
                    optimizer.step()
        type(self).buffer = [*replay, task]


# (g) ------------------------------------------------------------------------------------------
_LEARNED: set[tuple[str, int]] = set()


class DodgesTheSecondLearn(Naive):
    """Does nothing on the second ``learn`` of a task in a process (the counted replay)."""

    def learn(self, task):
        if (task.name, len(self.datasets)) in _LEARNED:
            self._ensure_net(task.input_shape).add_head()  # a head, so predict still answers
            self.datasets.append(task.dataset)
            return
        _LEARNED.add((task.name, len(self.datasets)))
        super().learn(task)


class DodgesTheFlopCounter(Naive):
    """Learns nothing while a dispatch mode (the FLOP counter of the counted replay) is on."""

    def learn(self, task):
        if _get_current_dispatch_mode_stack():
            self._ensure_net(task.input_shape).add_head()
            self.datasets.append(task.dataset)
            return
        super().learn(task)


VOTES = 300


def _in_a_thread(call):
    """``call()``'s value, computed in a thread of its own (where a dispatch mode of the
    calling thread, such as the FLOP counter, does not reach)."""
    values = []
    thread = threading.Thread(target=lambda: values.append(call()))
    thread.start()
    thread.join()
    return values[0]


class TrainsInAThread(Naive):
    """Learns as naive does, in a thread of its own: the same state, no FLOPs counted."""

    def learn(self, task):
        _in_a_thread(lambda: super(TrainsInAThread, self).learn(task))


class PredictsInAThread(Naive):
    """Answers by a vote of many passes of naive's network (a costly prediction), run in a
    thread of its own."""

    def predict(self, x, task_id):
        honest = super().predict
        votes = _in_a_thread(lambda: sum(honest(x, task_id) for _ in range(VOTES)))
        return (2 * votes > VOTES).long()


class WorksInAChildProcess(Naive):
    """Learns as naive does after a second of work done in a child process, whose answer it
    reads and which it never waits for (work of any kind a child could do uncounted)."""

    def learn(self, task):
        read, write = os.pipe()
        if os.fork() == 0:
            end = time.process_time() + 1.0
            while time.process_time() < end:
                pass
            os.write(write, b"done")
            os._exit(0)
        os.close(write)
        assert os.read(read, 4) == b"done"
        os.close(read)
        super().learn(task)


_PREDICTED: dict[int | None, torch.Tensor] = {}


class DodgesTheSecondPredict(Naive):
    """Answers a task's queries from memory, without running its net, when they come a
    second time in a process: a FLOP count taken after the timed pass (or before it) in one
    process would see no work."""

    def predict(self, x, task_id):
        if task_id not in _PREDICTED or len(_PREDICTED[task_id]) != len(x):
            _PREDICTED[task_id] = super().predict(x, task_id)
        return _PREDICTED[task_id]


class PredictsCheaplyWhenCounted(Naive):
    """Answers zeros, at no cost, while a dispatch mode (the FLOP counter) is on."""

    def predict(self, x, task_id):
        if _get_current_dispatch_mode_stack():
            return torch.zeros(len(x), dtype=torch.int64)
        return super().predict(x, task_id)


# (h) ------------------------------------------------------------------------------------------
class ReachesTheNetwork(Naive):
    """Tries to reach a package registry in ``learn``; reports what happened in ``metrics``."""

    def learn(self, task):
        super().learn(task)
        try:
            with socket.create_connection(("pypi.org", 443), timeout=3):
                self.network = "reached pypi.org:443"
        except OSError as error:
            self.network = f"blocked: {type(error).__name__}: {error}"

    def metrics(self):
        return {"network": self.network}


# (i) ------------------------------------------------------------------------------------------
def _mnist5k_file() -> Path:
    from clbench.data.info import mnist5k_file

    return Path(str(mnist5k_file()))


def _other_processes() -> list[int]:
    """Ids of every other process visible in /proc, the parent (the harness) first."""
    own, parent = os.getpid(), os.getppid()
    found = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [parent, *(pid for pid in found if pid not in (own, parent))]


class ReadsTheHarnessThroughProc(_KnowsItsTasks):
    """Reads the harness's ``/proc/<pid>/environ`` and, through ``/proc/<pid>/root`` of any
    process it can see, the dataset file hidden from it, to look its queries' labels up.
    ``harness_pid`` (the tests pass it) says whether the harness itself was reachable."""

    def __init__(self, device="cpu", harness_pid=0, **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.harness_pid = harness_pid

    def learn(self, task):
        super().learn(task)
        try:
            Path(f"/proc/{self.harness_pid}/environ").read_bytes()
            self.harness_environ = True
        except OSError:
            self.harness_environ = False

    def metrics(self):
        return {"harness_environ_readable": self.harness_environ}

    def predict(self, x, task_id):
        target = _mnist5k_file()
        for pid in _other_processes():
            try:
                with gzip.open(f"/proc/{pid}/root{target}", "rt") as handle:
                    table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
            except (OSError, ValueError, EOFError):
                continue
            images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
            stolen = self._labels_from_digits(x, task_id, images, torch.from_numpy(table[:, -1]))
            if stolen is not None:
                return stolen
        return super().predict(x, task_id)


# (j) the costs a worker reports ---------------------------------------------------------------
def _busy(seconds: float, call):
    """``call()``, repeated until this process has used ``seconds`` of CPU; its first value.
    (The CPU clock, not the wall clock the harness's timer reads, which a cheat rewrites.)"""
    start = time.process_time()
    value = call()
    while time.process_time() - start < seconds:
        call()
    return value


def _stop_the_clock() -> None:
    """Stop the clock this worker times calls by (``time.perf_counter`` as
    ``clbench.costs`` reads it): a call ending now reports about zero seconds."""
    import types

    import clbench.costs

    frozen = time.perf_counter()
    clbench.costs.time = types.SimpleNamespace(perf_counter=lambda: frozen)


class StopsItsClock(Naive):
    """Does ``busy`` CPU seconds of real work in ``where`` (learn or predict), having first
    stopped the clock its worker times calls by (``time.perf_counter`` as ``clbench.costs``
    reads it) when ``stop`` is set: the call would report about zero seconds."""

    def __init__(self, device="cpu", where="learn", busy=1.0, stop=True, **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.where, self.busy, self.stop = where, busy, stop

    def _work(self, call):
        if self.stop:
            _stop_the_clock()
        return _busy(self.busy, call)

    def learn(self, task):
        if self.where != "learn":
            return super().learn(task)
        return self._work(lambda: Naive.learn(self, task))

    def predict(self, x, task_id):
        if self.where != "predict":
            return super().predict(x, task_id)
        return self._work(lambda: Naive.predict(self, x, task_id))


class TrainsInStateDict(Naive):
    """Keeps the task in ``learn``, which is timed and FLOP-counted, and trains on it in
    ``state_dict``, which is neither, until it has used ``busy`` CPU seconds."""

    def __init__(self, device="cpu", busy=1.0, **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.busy, self.pending = busy, None

    def learn(self, task):
        self.pending = task

    def state_dict(self):
        if self.pending is not None:
            task, self.pending = self.pending, None
            _busy(self.busy, lambda: Naive.learn(self, task))
        return super().state_dict()


def _ignore_sigchld_from_a_high_address() -> None:
    """rt_sigaction(SIGCHLD, SIG_IGN) with the new action at an address whose low 32 bits
    are 0 (x86_64): a filter reading only a pointer's low word takes it for NULL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    address = 0x7E0000000000
    mapped = libc.mmap(ctypes.c_void_p(address), 4096, 3, 0x22 | 0x100000, -1, 0)
    if mapped != address:
        raise OSError(ctypes.get_errno(), "no page at the high address")
    ctypes.memmove(address, (ctypes.c_uint64 * 4)(1, 0, 0, 0), 32)  # handler SIG_IGN
    if libc.syscall(13, signal.SIGCHLD, ctypes.c_void_p(address), None, 8) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


class HidesWorkInAnIgnoredChild(Naive):
    """Stops its clock and learns in a child forked with SIGCHLD ignored: the kernel reaps
    such a child itself, and its CPU time is added to no process's count. ``raw``: SIGCHLD
    is ignored through the system call, with the action at a high address."""

    def __init__(self, device="cpu", raw=False, **kwargs) -> None:
        super().__init__(device, **kwargs)
        self.raw = raw

    def learn(self, task):
        _stop_the_clock()
        if self.raw:
            _ignore_sigchld_from_a_high_address()
        else:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        read, write = os.pipe()
        if os.fork() == 0:
            try:
                _busy(1.0, lambda: Naive.learn(Naive(self.device), task))
                Naive.learn(self, task)
                blob = io.BytesIO()
                torch.save(super().state_dict(), blob)
                with os.fdopen(write, "wb") as stream:
                    stream.write(blob.getvalue())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as stream:
            self.load_state_dict(torch.load(io.BytesIO(stream.read()), weights_only=True))


class AnswersForTheTimedPass(Naive):
    """In the fork that counts a prediction's FLOPs, sends on the first socket it holds
    besides its prints what the worker would send: 1e6 untimed CPU seconds, then a reply
    of 1e-6 s with the labels the fork just computed (on task 0 they are all the queries).
    Taken for the worker's, it would set the step's seconds and pass every check."""

    forged = False

    def predict(self, x, task_id):
        labels = super().predict(x, task_id)
        if _get_current_dispatch_mode_stack() and not self.forged:  # the counted pass's fork
            from clbench.sealed.channel import array_blob, send_message

            self.forged = True
            sockets = [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2
                       and _is_socket(fd)]
            if sockets:
                sock = socket.socket(fileno=os.dup(min(sockets)))
                meta, raw = array_blob(labels.to(torch.int64))
                send_message(sock, {"excused_cpu_seconds": 1e6})
                send_message(sock, {"ok": True, "started": 0.0, "seconds": 1e-6, "flops": None,
                                    "labels": meta}, [raw])
        return labels


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


class ReadsTheCountedPassUsage(Naive):
    """Makes 20,000 page faults in the pass that counts its prediction's FLOPs, and prints
    what the timed pass can see of that pass's resource usage (a channel of tens of bits a
    call: the labels of a small query set)."""

    def predict(self, x, task_id):
        import resource

        if _get_current_dispatch_mode_stack():  # the counting pass
            pages = bytearray(20_000 * 4096)
            pages[::4096] = b"\x01" * 20_000  # one fault a page
        else:
            seen = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
            print(f"counted pass's page faults seen: {seen}", file=sys.stderr, flush=True)
        return super().predict(x, task_id)


class SetsOptionsOnItsPrints(Naive):
    """Sets a socket option on its stdout in the pass that counts its prediction's FLOPs
    and prints what the timed pass reads back: shared with the worker, that socket carried
    32 bits an option."""

    def predict(self, x, task_id):
        with contextlib.suppress(OSError):
            prints = socket.socket(fileno=os.dup(1))
            if _get_current_dispatch_mode_stack():  # the counting pass
                prints.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 123457)
            else:
                seen = prints.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
                print(f"option seen: {seen}", file=sys.stderr, flush=True)
        return super().predict(x, task_id)


class KeepsTheZygoteWaiting(Naive):
    """In the pass that counts its prediction's FLOPs, closes every pipe it holds (among
    them the one whose end tells the worker the pass is over) and runs on."""

    def predict(self, x, task_id):
        if _get_current_dispatch_mode_stack():
            for fd in map(int, os.listdir("/proc/self/fd")):
                with contextlib.suppress(OSError):
                    if stat.S_ISFIFO(os.fstat(fd).st_mode):
                        os.close(fd)
            time.sleep(3600)
        return super().predict(x, task_id)
