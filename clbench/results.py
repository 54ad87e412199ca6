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
of the final state) with ``sealed``, ``isolation``, ``reproducible`` and ``failure``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "clbench.result/2"
STATUSES = ("running", "complete", "failed", "interrupted")
FAILURE_KINDS = ("agent_error", "contract", "worker_died", "timeout", "protocol",
                 "irreproducible", "interrupted", "harness_error")


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
    schema: str = SCHEMA

    @property
    def storage_bytes(self) -> list[int]:
        return self.storage["bytes"]

    @property
    def n_tasks_done(self) -> int:
        return len(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a reader never sees half a file."""
        return write_json_atomic(path, self.to_dict())


COST_KEYS = (
    "learn_seconds", "learn_flops", "learn_peak_memory_bytes", "predict_seconds",
    "predict_flops",
)


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=1, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------------------- validation
def _fail(path: str, message: str) -> None:
    raise ResultFormatError(f"result field '{path}': {message}")


def _expect(value: Any, types: type | tuple[type, ...], path: str, nullable: bool = False):
    if value is None and nullable:
        return
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(path, f"expected {types}, got a boolean")
    if not isinstance(value, types):
        kind = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        _fail(path, f"expected {kind}{' or null' if nullable else ''}, got {type(value).__name__}")


def _expect_number_list(values: Any, path: str, nullable_items: bool = False,
                        length: int | None = None) -> None:
    _expect(values, list, path)
    if length is not None and len(values) != length:
        _fail(path, f"expected {length} entries (one per finished task), got {len(values)}")
    for index, value in enumerate(values):
        _expect(value, (int, float), f"{path}[{index}]", nullable=nullable_items)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"{path}[{index}]", "must be finite")


def validate_result(data: Any) -> dict[str, Any]:
    """Check a parsed result against schema ``clbench.result/2``; return it unchanged."""
    _expect(data, dict, "<root>")
    if data.get("schema") != SCHEMA:
        _fail("schema", f"expected {SCHEMA!r}, got {data.get('schema')!r}")
    required = ("env", "agent", "seed", "device", "versions", "git_commit", "started_at",
                "status", "error", "accuracy", "metrics", "storage", "costs", "agent_metrics",
                "sealed", "isolation", "reproducible", "fwt_baseline", "failure",
                "finished_at", "wall_seconds")
    for key in required:
        if key not in data:
            _fail(key, "missing")
    _expect(data["env"], dict, "env")
    _expect(data["env"].get("id"), str, "env.id")
    _expect(data["env"].get("kwargs"), dict, "env.kwargs")
    _expect(data["env"].get("task_names"), list, "env.task_names")
    _expect(data["agent"], dict, "agent")
    _expect(data["agent"].get("name"), str, "agent.name")
    _expect(data["agent"].get("kwargs"), dict, "agent.kwargs")
    _expect(data["seed"], int, "seed")
    _expect(data["device"], str, "device")
    _expect(data["versions"], dict, "versions")
    _expect(data["git_commit"], str, "git_commit", nullable=True)
    _expect(data["started_at"], str, "started_at")
    if data["status"] not in STATUSES:
        _fail("status", f"expected one of {STATUSES}, got {data['status']!r}")
    _expect(data["error"], str, "error", nullable=True)
    if data["status"] in ("failed", "interrupted") and not data["error"]:
        _fail("error", f"a {data['status']} run must say why")

    rows = data["accuracy"]
    _expect(rows, list, "accuracy")
    n_tasks = len(data["env"]["task_names"])
    if len(rows) > n_tasks:
        _fail("accuracy", f"{len(rows)} rows for a stream of {n_tasks} tasks")
    for i, row in enumerate(rows):
        _expect_number_list(row, f"accuracy[{i}]", nullable_items=True)
        for j, value in enumerate(row):
            if value is not None and not 0.0 <= value <= 1.0:
                _fail(f"accuracy[{i}][{j}]", f"accuracy {value} is outside [0, 1]")
        if len(row) <= i or row[i] is None:
            _fail(f"accuracy[{i}]", f"row {i} lacks the accuracy on task {i}")
    if data["status"] == "complete" and len(rows) != n_tasks:
        _fail("accuracy", f"a complete run has {n_tasks} rows, got {len(rows)}")

    _expect(data["metrics"], dict, "metrics")
    if rows:
        for key in ("acc", "bwt", "forgetting", "learning_accuracy", "retained"):
            if key not in data["metrics"]:
                _fail(f"metrics.{key}", "missing")
            _expect(data["metrics"][key], (int, float), f"metrics.{key}", nullable=True)

    _expect(data["storage"], dict, "storage")
    for key in ("bytes", "reference_fp32_bytes", "compression"):
        _expect_number_list(data["storage"].get(key), f"storage.{key}", length=len(rows))
    _expect(data["costs"], dict, "costs")
    for key in COST_KEYS:
        _expect_number_list(data["costs"].get(key), f"costs.{key}", nullable_items=True,
                            length=len(rows))
    _expect(data["agent_metrics"], list, "agent_metrics")
    if len(data["agent_metrics"]) != len(rows):
        _fail("agent_metrics", f"expected {len(rows)} entries, got {len(data['agent_metrics'])}")
    _validate_isolation(data, len(rows), n_tasks)
    _expect(data["finished_at"], str, "finished_at", nullable=True)
    _expect(data["wall_seconds"], (int, float), "wall_seconds", nullable=True)
    return data


def _validate_isolation(data: dict[str, Any], n_rows: int, n_tasks: int) -> None:
    """The schema-2 fields: sealed, isolation, reproducible, fwt_baseline, failure."""
    _expect(data["sealed"], bool, "sealed")
    _expect(data["isolation"], dict, "isolation")
    for key in ("mode", "reason"):
        _expect(data["isolation"].get(key), str, f"isolation.{key}")
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
        _expect_number_list(data["fwt_baseline"], "fwt_baseline", length=n_tasks)
    _expect(data["failure"], dict, "failure", nullable=True)
    if data["status"] in ("failed", "interrupted") and data["failure"] is None:
        _fail("failure", f"a {data['status']} run says what went wrong")
    if data["failure"] is not None and data["failure"].get("kind") not in FAILURE_KINDS:
        _fail("failure.kind", f"expected one of {FAILURE_KINDS}, got "
                              f"{data['failure'].get('kind')!r}")


def load_result(path: str | os.PathLike) -> Result:
    """Read and validate a result file; malformed files raise :class:`ResultFormatError`."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ResultFormatError(f"{path}: not valid JSON ({error})") from None
    try:
        validate_result(data)
    except ResultFormatError as error:
        raise ResultFormatError(f"{path}: {error}") from None
    return Result(**data)
