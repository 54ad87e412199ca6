"""Result files: one JSON per run, schema ``clbench.result/2``, written atomically.

A result holds everything needed to trust and compare a run: the environment (id, kwargs,
task names), the agent (name, kwargs), seed, device, versions, git commit, the accuracy
matrix R with its metrics, storage after every task, per-task costs, agent metrics, status
and timestamps; how it was isolated (``sealed``: fresh sandboxed workers; ``isolation``: the
mode, the reason, the median worker start), whether each task's ``learn`` was reproduced by
its replay (``reproducible``), FWT's fresh-agent baseline (``fwt_baseline``) and, when it
did not complete, what went wrong (``failure``: kind, stage, task, the agent's traceback).
:func:`load_result` validates a file and names the first malformed field.

Schema 2 (the sealed harness) replaced schema 1's ``verification`` (the fresh-process check
of the final state) with ``sealed``, ``isolation``, ``reproducible`` and ``failure``. It
later gained ``eval_every`` (the evaluation schedule, :func:`clbench.metrics.full_row`) and
``eval_note`` (what a sparse schedule means for the metrics, null for 1); files written
before them lack both and read as ``eval_every`` 1. Null entries in ``accuracy`` (tasks not
evaluated) are valid only with ``eval_every`` > 1, and only in rows off the schedule.
Then ``hosts``: the machine of each session of the run (a resumed run has several), as
``{"first_task", "cpu", "cores", "gpu"}``: the first task that session ran, the CPU model,
the cores the harness could use (the run's torch threads are ``isolation["threads"]``),
the GPU's name on CUDA (else null). Seconds compare only on one machine; files written
before it lack it and read as ``[]`` (not recorded), and a file of that age resumed since
has entries from the task its first recorded session began at.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clbench.metrics import full_row

SCHEMA = "clbench.result/2"
STATUSES = ("running", "complete", "failed", "interrupted")
FAILURE_KINDS = ("agent_error", "contract", "worker_died", "timeout", "protocol",
                 "irreproducible", "uncounted_work", "implausible_cost", "interrupted",
                 "harness_error")


class ResultFormatError(ValueError):
    """A result file does not follow the schema; the message names the field."""


@dataclass
class Result:
    """One run of one agent on one task stream (see the module docstring)."""

    env: dict[str, Any]
    agent: dict[str, Any]
    seed: int
    device: str
    versions: dict[str, str | None]
    git_commit: str | None
    started_at: str
    status: str = "running"
    error: str | None = None
    accuracy: list[list[float | None]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, list] = field(
        default_factory=lambda: {"bytes": [], "reference_fp32_bytes": [], "compression": []})
    costs: dict[str, list] = field(default_factory=lambda: {key: [] for key in COST_KEYS})
    agent_metrics: list[dict[str, Any]] = field(default_factory=list)
    sealed: bool = False
    isolation: dict[str, Any] = field(default_factory=dict)
    reproducible: list[bool | None] = field(default_factory=list)
    fwt_baseline: list[float] | None = None
    failure: dict[str, Any] | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None
    eval_every: int = 1
    eval_note: str | None = None
    hosts: list[dict[str, Any]] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def storage_bytes(self) -> list[int]:
        return self.storage["bytes"]

    @property
    def n_tasks_done(self) -> int:
        return len(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        """The fields by name. Nested lists and dicts are this result's own, not copies
        (``dataclasses.asdict`` deep-copied them: on a 333-task stream, where the file is
        written after every task, that copy was most of the harness's own time)."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a reader never sees half a file. A running
        result (rewritten after every task) is written compact, a final one indented."""
        return write_json_atomic(path, self.to_dict(),
                                 indent=None if self.status == "running" else 1)


COST_KEYS = (
    "learn_seconds", "learn_flops", "learn_peak_memory_bytes", "predict_seconds",
    "predict_flops",
)


def _user_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask (0o644 under
    umask 022). ``mkstemp`` creates 0o600 files, which other users could not read."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename) with the user's
    normal file mode: a reader never sees half a file, and a failed write (full disk,
    read-only folder) leaves the earlier file as it was."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                        suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, f"cannot write {target} ({error.strerror or error}); any "
                                   "earlier version of it is intact") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), _user_file_mode())
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, target)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write {target} ({error.strerror or error}); any "
                                   "earlier version of it is intact") from error
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any],
                      indent: int | None = 1) -> Path:
    """:func:`write_bytes_atomic` of ``payload`` as JSON (no NaN or infinity), indented by
    ``indent`` (None: compact, about half the time of an indented file)."""
    text = json.dumps(payload, indent=indent, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode())


# ---------------------------------------------------------------------------- validation
MAX_RESULT_BYTES = 64 * 2**20  # a 1,000-task run with future queries is about 20 MB
MAX_DEPTH = 32  # results nest 4 levels; agent metrics and kwargs get some room
METRIC_KEYS = ("acc", "bwt", "forgetting", "learning_accuracy", "fwt", "retained",
               "retained_threshold")
REQUIRED_METRICS = ("acc", "bwt", "forgetting", "learning_accuracy", "retained")
STORAGE_KEYS = ("bytes", "reference_fp32_bytes", "compression")
# costs per task (lists), plus the scalars the harness adds at the end of a run
COST_SCALARS = ("process_peak_memory_bytes",)
# fields a file may lack (written before they existed): read as their defaults
OPTIONAL_FIELDS = ("eval_every", "eval_note", "hosts")
HOST_KEYS = ("first_task", "cpu", "cores", "gpu")


def _fail(path: str, message: str) -> None:
    raise ResultFormatError(f"result field '{path}': {message}")


def _kind(types: type | tuple[type, ...]) -> str:
    return types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)


def _expect(value: Any, types: type | tuple[type, ...], path: str, nullable: bool = False):
    if value is None and nullable:
        return
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(path, f"expected {_kind(types)}, got a boolean")
    if not isinstance(value, types):
        _fail(path, f"expected {_kind(types)}{' or null' if nullable else ''}, "
                    f"got {type(value).__name__}")


def _expect_keys(value: Any, path: str, required: tuple[str, ...],
                 optional: tuple[str, ...] = ()) -> None:
    _expect(value, dict, path)
    prefix = "" if path == "<root>" else f"{path}."
    for key in required:
        if key not in value:
            _fail(f"{prefix}{key}", "missing")
    extra = [key for key in value if key not in required + optional]
    if extra:
        _fail(f"{prefix}{extra[0][:40]}",
              f"unknown field; {'a result' if not prefix else path} holds only "
              f"{', '.join(required + optional)}")


def _expect_line(value: Any, path: str, nullable: bool = False) -> None:
    """A string shown in tables: non-empty, printable, on one line."""
    _expect(value, str, path, nullable)
    if value is not None and not (value and value.isprintable()):
        _fail(path, f"{value[:40]!r} must be a non-empty string of printable characters on one "
                    "line")


def _expect_number(value: Any, path: str, nullable: bool = False, integer: bool = False,
                   low: float | None = None, high: float | None = None) -> None:
    _expect(value, int if integer else (int, float), path, nullable)
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(path, f"{value} is outside [{low}, {'inf' if high is None else high}]")


def _expect_number_list(values: Any, path: str, length: int, nullable_items: bool = False,
                        integer: bool = False) -> None:
    _expect(values, list, path)
    if len(values) != length:
        _fail(path, f"expected {length} entries (one per finished task), got {len(values)}")
    for index, value in enumerate(values):
        _expect_number(value, f"{path}[{index}]", nullable_items, integer, low=0)


def _expect_timestamp(value: Any, path: str, nullable: bool = False) -> None:
    _expect_line(value, path, nullable)
    if value is not None:
        try:
            datetime.datetime.fromisoformat(value)
        except ValueError:
            _fail(path, f"{value!r} is not an ISO 8601 time")


def _check_plain(data: Any) -> None:
    """Every value is JSON (dicts with string keys, lists, strings, finite numbers, booleans,
    null), nested at most :data:`MAX_DEPTH` levels; walked without recursion."""
    stack = [(data, "<root>", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            _fail(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    _fail(path, f"key {key!r} is not a string")
                stack.append((item, f"{path}.{key}" if path != "<root>" else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            _fail(path, f"{value} is not a finite number")
        elif not (value is None or isinstance(value, str | int | float)):
            _fail(path, f"a {type(value).__name__} is not a JSON value")


def _check_accuracy(rows: Any, n_tasks: int, status: str, eval_every: int) -> None:
    _expect(rows, list, "accuracy")
    if len(rows) > n_tasks:
        _fail("accuracy", f"{len(rows)} rows for a stream of {n_tasks} tasks")
    for i, row in enumerate(rows):
        _expect(row, list, f"accuracy[{i}]")
        if len(row) > n_tasks:
            _fail(f"accuracy[{i}]", f"{len(row)} entries for a stream of {n_tasks} tasks")
        if len(row) <= i or row[i] is None:
            _fail(f"accuracy[{i}]", f"row {i} lacks the accuracy on task {i}")
        full = full_row(i, n_tasks, eval_every)
        for j, value in enumerate(row):
            if value is None and full:
                _fail(f"accuracy[{i}][{j}]", "null in a row that evaluates every task (" + (
                    "eval_every is 1" if eval_every == 1 else
                    f"every row i with (i + 1) % {eval_every} == 0, and the last") + ")")
            _expect_number(value, f"accuracy[{i}][{j}]", nullable=True, low=0.0, high=1.0)
    if status == "complete" and len(rows) != n_tasks:
        _fail("accuracy", f"a complete run has {n_tasks} rows, got {len(rows)}")


def validate_result(data: Any) -> dict[str, Any]:
    """Check a parsed result against schema ``clbench.result/2``; return it unchanged.

    The check is complete: every field of :class:`Result` must be present and no other;
    nested objects hold exactly their documented keys (``costs`` may add the run's scalar
    ``process_peak_memory_bytes``; ``isolation``, ``failure``, ``agent_metrics`` and the
    kwargs are free-form JSON beyond the keys checked); numbers are finite and in range;
    names shown in tables (agent, env, tasks, device, the hosts' CPU and GPU) are printable
    one-line strings.
    Raises :class:`ResultFormatError` naming the first bad field.
    """
    _check_plain(data)
    _expect(data, dict, "<root>")
    if data.get("schema") != SCHEMA:
        _fail("schema", f"expected {SCHEMA!r}, got {str(data.get('schema'))[:40]!r}")
    _expect_keys(data, "<root>", tuple(f.name for f in fields(Result)
                                       if f.name not in OPTIONAL_FIELDS), OPTIONAL_FIELDS)
    _expect_keys(data["env"], "env", ("id", "kwargs", "task_names"))
    _expect_line(data["env"]["id"], "env.id")
    _expect(data["env"]["kwargs"], dict, "env.kwargs")
    task_names = data["env"]["task_names"]
    _expect(task_names, list, "env.task_names")
    if not task_names:
        _fail("env.task_names", "a stream has at least one task")
    for index, name in enumerate(task_names):
        _expect_line(name, f"env.task_names[{index}]")
    _expect_keys(data["agent"], "agent", ("name", "kwargs"))
    _expect_line(data["agent"]["name"], "agent.name")
    _expect(data["agent"]["kwargs"], dict, "agent.kwargs")
    _expect_number(data["seed"], "seed", integer=True, low=0)
    _expect_line(data["device"], "device")
    _expect(data["versions"], dict, "versions")
    for key, version in data["versions"].items():
        _expect_line(version, f"versions.{key}", nullable=True)
    _expect_line(data["git_commit"], "git_commit", nullable=True)
    _expect_timestamp(data["started_at"], "started_at")
    _expect_timestamp(data["finished_at"], "finished_at", nullable=True)
    if data["status"] not in STATUSES:
        _fail("status", f"expected one of {STATUSES}, got {str(data['status'])[:40]!r}")
    _expect(data["error"], str, "error", nullable=True)
    if data["status"] in ("failed", "interrupted") and not data["error"]:
        _fail("error", f"a {data['status']} run must say why")

    eval_every = data.get("eval_every", 1)
    _expect_number(eval_every, "eval_every", integer=True, low=1)
    if eval_every == 1 and data.get("eval_note") is not None:
        _fail("eval_note", "a run with eval_every 1 (the full matrix) has no note: null")
    _expect_line(data.get("eval_note"), "eval_note", nullable=eval_every == 1)
    rows = data["accuracy"]
    _check_accuracy(rows, len(task_names), data["status"], eval_every)
    _expect_keys(data["metrics"], "metrics", REQUIRED_METRICS if rows else (),
                 METRIC_KEYS if not rows else tuple(k for k in METRIC_KEYS
                                                    if k not in REQUIRED_METRICS))
    for key, value in data["metrics"].items():
        _expect_number(value, f"metrics.{key}", nullable=True, integer=key == "retained")

    _expect_keys(data["storage"], "storage", STORAGE_KEYS)
    for key in STORAGE_KEYS:
        _expect_number_list(data["storage"][key], f"storage.{key}", len(rows),
                            integer=key != "compression")
    _expect_keys(data["costs"], "costs", COST_KEYS, COST_SCALARS)
    for key in COST_KEYS:
        _expect_number_list(data["costs"][key], f"costs.{key}", len(rows),
                            nullable_items=not key.endswith("_seconds"),
                            integer=not key.endswith("_seconds"))
    for key in COST_SCALARS:
        if key in data["costs"]:
            _expect_number(data["costs"][key], f"costs.{key}", nullable=True, integer=True,
                           low=0)
    _expect(data["agent_metrics"], list, "agent_metrics")
    if len(data["agent_metrics"]) != len(rows):
        _fail("agent_metrics", f"expected {len(rows)} entries, got {len(data['agent_metrics'])}")
    for index, figures in enumerate(data["agent_metrics"]):
        _expect(figures, dict, f"agent_metrics[{index}]")
    _validate_isolation(data, len(rows), len(task_names))
    _check_hosts(data.get("hosts", []), len(rows), data["device"])
    _expect_number(data["wall_seconds"], "wall_seconds", nullable=True, low=0)
    return data


def _check_hosts(hosts: Any, n_rows: int, device: str) -> None:
    """One entry per session, in the order they ran: no session starts after the tasks
    the file holds, nor before the session that preceded it; a GPU exactly on CUDA."""
    _expect(hosts, list, "hosts")
    previous, on_cuda = 0, device.startswith("cuda")
    for index, entry in enumerate(hosts):
        path = f"hosts[{index}]"
        _expect_keys(entry, path, HOST_KEYS)
        _expect_number(entry["first_task"], f"{path}.first_task", integer=True, low=previous,
                       high=n_rows)
        previous = entry["first_task"]
        _expect_line(entry["cpu"], f"{path}.cpu")
        _expect_number(entry["cores"], f"{path}.cores", integer=True, low=1)
        _expect_line(entry["gpu"], f"{path}.gpu", nullable=not on_cuda)
        if not on_cuda and entry["gpu"] is not None:
            _fail(f"{path}.gpu", f"a run on {device!r} names no GPU: null")


def _validate_isolation(data: dict[str, Any], n_rows: int, n_tasks: int) -> None:
    """The schema-2 fields: sealed, isolation, reproducible, fwt_baseline, failure."""
    _expect(data["sealed"], bool, "sealed")
    _expect(data["isolation"], dict, "isolation")
    for key in ("mode", "reason"):
        _expect_line(data["isolation"].get(key), f"isolation.{key}")
    if data["sealed"] and data["isolation"].get("sandbox") is None:
        _fail("isolation.sandbox", "a sealed run names its sandbox")
    _expect(data["reproducible"], list, "reproducible")
    if len(data["reproducible"]) != n_rows:
        _fail("reproducible", f"expected {n_rows} entries, got {len(data['reproducible'])}")
    for index, value in enumerate(data["reproducible"]):
        _expect(value, bool, f"reproducible[{index}]", nullable=True)
        if data["status"] == "complete" and value is False:
            _fail(f"reproducible[{index}]", "a complete run has no irreproducible task")
    if data["fwt_baseline"] is not None:
        _expect_number_list(data["fwt_baseline"], "fwt_baseline", n_tasks)
        for index, value in enumerate(data["fwt_baseline"]):
            _expect_number(value, f"fwt_baseline[{index}]", high=1.0)
    _expect(data["failure"], dict, "failure", nullable=True)
    if data["status"] in ("failed", "interrupted") and data["failure"] is None:
        _fail("failure", f"a {data['status']} run says what went wrong")
    if data["failure"] is not None and data["failure"].get("kind") not in FAILURE_KINDS:
        _fail("failure.kind", f"expected one of {FAILURE_KINDS}, got "
                              f"{str(data['failure'].get('kind'))[:40]!r}")


def _no_constant(name: str) -> Any:
    raise ResultFormatError(f"holds {name}; result numbers must be finite")


def load_result(path: str | os.PathLike) -> Result:
    """Read and validate a result file; anything else raises :class:`ResultFormatError`
    naming the file and what is wrong: missing, a folder, unreadable, larger than
    :data:`MAX_RESULT_BYTES`, not UTF-8 text, not JSON, NaN or infinite numbers, nesting
    too deep, or a field off the schema (see :func:`validate_result`)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ResultFormatError(f"{path}: is a directory, not a result file")
        if path.exists() and not path.is_file():
            raise ResultFormatError(f"{path}: is not a regular file")
        with open(path, "rb") as stream:
            raw = stream.read(MAX_RESULT_BYTES + 1)
        if len(raw) > MAX_RESULT_BYTES:
            raise ResultFormatError(f"{path}: larger than {MAX_RESULT_BYTES:,} bytes, the most a "
                                    "result file may hold")
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        validate_result(data)
    except ResultFormatError as error:
        message = str(error)
        raise ResultFormatError(message if message.startswith(f"{path}:")
                                else f"{path}: {message}") from None
    except FileNotFoundError:
        raise ResultFormatError(f"{path}: no such file") from None
    except OSError as error:
        raise ResultFormatError(f"{path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ResultFormatError(f"{path}: not a result file (binary, not UTF-8 JSON)") from None
    except json.JSONDecodeError as error:
        raise ResultFormatError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise ResultFormatError(f"{path}: JSON nested too deeply to be a result file") from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise ResultFormatError(f"{path}: not a result file ({error})") from None
    return Result(**data)
