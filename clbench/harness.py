"""The evaluation harness: drives the task-stream env with an agent and writes a result.

Between tasks an agent *is* its state, and the operating system enforces it. The harness
process owns the environment (test inputs, test labels, dataset files); the agent's code
runs only in sealed workers (:mod:`clbench.sealed`): one fresh process per call, forked from
a zygote that has torch imported, sandboxed with bubblewrap where that works, started from
the serialised state of the previous task and nothing else. Per task:

1. ``learn`` (timed) in a worker that receives the task's training data; it answers with the
   serialised ``state_dict()``, whose bytes are the storage footprint;
2. with FLOPs on: a replay of the same ``learn`` from the same previous state and seeds
   under the FLOP counter (:class:`clbench.costs.FlopCounter`); its state must equal the
   timed call's (bitwise on CPU; on CUDA, the same labels on the task's training inputs up
   to :data:`CUDA_LABEL_TOLERANCE`), otherwise
   the run fails: something outside the state was used, or ``learn`` is not deterministic;
3. ``predict`` (timed) of every query in a worker loaded from the new state, and with FLOPs
   on, once more in another fresh worker under the FLOP counter (so a cache the timed call
   filled, such as TN+EN's decoded weights, is counted);
4. ``env.step`` scores the labels: there is one evaluation path.

With ``eval_every`` N > 1 (long streams: the full accuracy matrix is O(T^2) predictions),
step 3 asks only for the queries of the task just learned (and, with ``query_future``, of
the next one), except after every N-th task and the last, which ask for all: the diagonal,
R[t][t+1] and the final row stay exact, the other entries are null. The env is unchanged:
the harness steps it with the agent's labels where it asked and placeholder zeros
elsewhere, and keeps only the accuracies of the tasks it asked about (one task's accuracy
depends on that task's labels alone).

``seal=False`` runs the same calls in this process, for debugging (results say unsealed).

With ``out``, a checkpoint beside the result (:mod:`clbench.checkpoint`) keeps the state
after every task, so that ``resume`` continues a killed, interrupted or failed run from its
last finished task: the same state bytes, seeds and env position as without the break.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

import clbench
from clbench import costs, metrics, progress
from clbench.agent import (
    ScenarioRefused,
    agent_reference,
    load_agent_class,
    require_scenario,
    supported_scenarios,
    worker_target,
)
from clbench.checkpoint import Checkpoint, ResumeRefused, first_difference, folder_for, hold
from clbench.devices import resolve_device
from clbench.env import UNTOLD_TASK, env_scenario
from clbench.nets import count_parameters, reference_net
from clbench.results import COST_KEYS, Result, ResultFormatError, load_result
from clbench.sealed import sandbox
from clbench.sealed.calls import (
    FRESH_AGENT,
    PREDICT,
    AgentCallError,
    LearnOutcome,
    PredictOutcome,
    build_agent,
    check_predictions,
    check_state,
    deserialize_state,
    jsonable,
    learn_call,
    predict_call,
    serialize_state,
)
from clbench.sealed.channel import array_blob, blob_array
from clbench.sealed.counted import counted_on_one_thread
from clbench.sealed.workers import CallResult, WorkerFailure, WorkerPool, check_seconds
from clbench.sealed.zygote import UNEQUAL_PREDICTIONS, WORKER_FLAG

# The state helpers stay importable from here (tests and benchmarks use them).
__all__ = ["AgentError", "ResumeRefused", "RunInterrupted", "build_agent", "check_predictions",
           "check_state", "deserialize_state", "evaluate", "serialize_state", "state_difference"]

# On CUDA, kernels are not bitwise deterministic: the replay's state passes when it labels
# the task's training inputs like the timed call's state, but for at most this fraction.
CUDA_LABEL_TOLERANCE = 0.01


class AgentError(RuntimeError):
    """An agent broke the contract, raised or died; ``result`` holds every finished task,
    ``result.failure`` the machine-readable kind and the agent's traceback."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) asked the run to stop; the result says ``interrupted``."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


# ----------------------------------------------------------------------------- agents
# ----------------------------------------------------------------------------- runners
class InProcessRunner:
    """The agent calls in this process (debugging; nothing is enforced)."""

    sealed = False

    def __init__(self, target: str | type, kwargs: dict, device: torch.device, seed: int,
                 input_shapes) -> None:
        self.cls = target if isinstance(target, type) else load_agent_class(target)
        self.kwargs, self.device, self.seed, self.shapes = kwargs, device, seed, input_shapes
        self.isolation = {"mode": "in-process", "sandbox": None,
                          "reason": "in-process mode (--no-seal / seal=False): the agent "
                                    "shares the harness's process and can reach anything",
                          "worker_start_median_seconds": None}

    def learn(self, previous: bytes | None, task, count_flops: bool,
              timeout: float | None) -> LearnOutcome:
        with _as_failure("learn"), counted_on_one_thread(count_flops, self.device,
                                                          "learn (replay)", False):
            return learn_call(self.cls, self.kwargs, self.device, previous, task.for_agent(),
                              self.seed, count_flops)

    def scenarios(self) -> tuple[str, ...]:
        with _as_failure("describe"):
            try:
                return supported_scenarios(self.cls)
            except TypeError as error:
                raise AgentCallError("describe", error, "contract") from error

    def predict(self, state: bytes | None, inputs, task_ids, seed_task: int,
                count_flops: bool, purpose: int = PREDICT) -> PredictOutcome:
        """Labels and seconds; with ``count_flops``, the FLOPs too (a second, counted pass,
        as a sealed worker answers them)."""
        def call(counted: bool) -> PredictOutcome:
            with _as_failure("predict"), counted_on_one_thread(
                    counted, self.device, "predict (FLOP count)", False):
                return predict_call(self.cls, self.kwargs, self.device, state, inputs,
                                    task_ids, self.shapes, self.seed, seed_task, counted,
                                    purpose)

        outcome = call(False)
        if count_flops:
            counted = call(True)
            if self.device.type == "cpu" and not torch.equal(counted.labels, outcome.labels):
                raise WorkerFailure("irreproducible", "predict (FLOP count)",
                                    UNEQUAL_PREDICTIONS)
            outcome.flops = counted.flops
        return outcome

class SealedRunner:
    """The agent calls in fresh workers (:mod:`clbench.sealed`), sandboxed where possible."""

    def __init__(self, target: str, kwargs: dict, device: torch.device, seed: int,
                 input_shapes, pool: WorkerPool) -> None:
        self.pool = pool  # owned by evaluate, which closes it
        self.sealed = pool.sandboxed
        self.base = {"agent": target, "kwargs": kwargs, "device": str(device), "seed": seed,
                     "threads": torch.get_num_threads()}
        self.device_type = device.type
        self.cores = usable_cores()
        self.shapes = [list(shape) for shape in input_shapes]
        self.isolation = {"mode": "workers", "sandbox": "bwrap" if self.sealed else None,
                          "reason": sandbox.bwrap_status()[1],
                          "worker_start_median_seconds": None}

    def learn(self, previous: bytes | None, task, count_flops: bool,
              timeout: float | None) -> LearnOutcome:
        arrays = [array_blob(task.x_train), array_blob(task.y_train)]
        header = {**self.base, "op": "learn", "task_id": task.id, "task_name": task.name,
                  "scenario": task.scenario, "count_flops": count_flops,
                  "has_state": previous is not None,
                  "arrays": [meta for meta, _ in arrays]}
        request = [previous or b"", *(b for _, b in arrays)]
        answer = self.pool.call(header, request, "learn", timeout)
        self._note_starts()
        reply = answer.header
        try:
            outcome = LearnOutcome(bytes(answer.blobs[0]), _number(reply, "seconds"),
                                   _number(reply, "peak_memory_bytes"), _number(reply, "flops"),
                                   jsonable(reply.get("metrics") or {}, "metrics()"))
        except (IndexError, TypeError, ValueError) as error:
            raise WorkerFailure("protocol", "learn", f"malformed reply: {error}") from None
        self._check_seconds(outcome.seconds, answer, "learn", request)
        return outcome

    def scenarios(self) -> tuple[str, ...]:
        """The scenarios the agent class declares, read in a worker (which imports it)."""
        header = {**self.base, "op": "describe", "has_state": False, "arrays": []}
        reply = self.pool.call(header, [b""], "describe").header
        self._note_starts()
        declared = reply.get("scenarios")
        if not (isinstance(declared, list) and all(isinstance(s, str) for s in declared)):
            raise WorkerFailure("protocol", "describe", f"malformed reply: {declared!r}")
        return tuple(declared)

    def predict(self, state: bytes | None, inputs, task_ids, seed_task: int,
                count_flops: bool, purpose: int = PREDICT) -> PredictOutcome:
        arrays = [array_blob(inputs), array_blob(task_ids)]
        header = {**self.base, "op": "predict", "task_id": seed_task, "purpose": purpose,
                  "count_flops": count_flops, "has_state": state is not None,
                  "input_shapes": self.shapes, "arrays": [meta for meta, _ in arrays]}
        request = [state or b"", *(b for _, b in arrays)]
        answer = self.pool.call(header, request, "predict")
        self._note_starts()
        reply, blobs = answer.header, answer.blobs
        try:
            labels = blob_array(reply.get("labels"), blobs[0])
            if labels.dtype != torch.int64 or tuple(labels.shape) != (len(task_ids),):
                raise ValueError(f"labels of dtype {labels.dtype} and shape "
                                 f"{tuple(labels.shape)} for {len(task_ids)} queries")
            if ((labels != 0) & (labels != 1)).any():
                raise ValueError("labels other than 0 and 1")
            outcome = PredictOutcome(labels.to(task_ids.device), _number(reply, "seconds"),
                                     None if answer.counted is None
                                     else _number(answer.counted, "flops"))
        except (IndexError, TypeError, ValueError) as error:
            raise WorkerFailure("protocol", "predict", f"malformed reply: {error}") from None
        if (answer.counted is not None and self.device_type == "cpu"
                and answer.counted.get("labels_sha256") != hashlib.sha256(blobs[0]).hexdigest()):
            raise WorkerFailure("irreproducible", "predict (FLOP count)", UNEQUAL_PREDICTIONS)
        self._check_seconds(outcome.seconds, answer, "predict", request)
        return outcome

    def _check_seconds(self, seconds: float | None, answer: CallResult, stage: str,
                       request: list) -> None:
        size = sum(memoryview(blob).nbytes for blob in [*request, *answer.blobs])
        check_seconds(seconds, answer.cpu_seconds, self.cores, stage, size, self.device_type)

    def _note_starts(self) -> None:
        self.isolation["worker_start_median_seconds"] = self.pool.median_start_seconds


def _number(reply: dict, key: str) -> int | float | None:
    value = reply.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"{key} is a {type(value).__name__}")
    return value


@contextlib.contextmanager
def _as_failure(stage: str) -> Iterator[None]:
    try:
        yield
    except AgentCallError as error:
        raise WorkerFailure(error.kind, error.stage, str(error), error.traceback,
                            error.task_id) from error


# ----------------------------------------------------------------------------- reproducibility
def state_difference(first: bytes, second: bytes) -> str | None:
    """None when two serialised states hold bitwise the same values, else where they differ."""
    if first == second:
        return None
    return _difference(deserialize_state(first), deserialize_state(second), "state")


def _difference(a: Any, b: Any, where: str) -> str | None:
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where} is {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        bits_a = a.detach().contiguous().view(-1).view(torch.uint8)
        bits_b = b.detach().contiguous().view(-1).view(torch.uint8)
        if not torch.equal(bits_a, bits_b):
            changed = int((a.reshape(-1) != b.reshape(-1)).sum()) if a.numel() else 0
            return f"{where} differs in {changed} of {a.numel()} values"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where} has keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            found = _difference(a[key], b[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if type(a) is type(b) and a == b else f"{where} is {a!r} vs {b!r}"


def _reproduction_problem(runner, timed: LearnOutcome, replay: LearnOutcome, task,
                          device: torch.device) -> str | None:
    """Why the replay's state does not reproduce the timed call's, or None."""
    if device.type != "cuda":
        found = state_difference(timed.state, replay.state)
        return None if found is None else f"the states differ bitwise: {found}"
    ids = torch.full((len(task.y_train),), task.id, dtype=torch.int64, device=task.x_train.device)
    labels = [runner.predict(state, task.x_train, ids, task.id, False).labels
              for state in (timed.state, replay.state)]
    share = float((labels[0] != labels[1]).double().mean()) if len(ids) else 0.0
    if share <= CUDA_LABEL_TOLERANCE:
        return None
    return (f"the two states label {share:.1%} of the task's training inputs differently "
            f"(on CUDA at most {CUDA_LABEL_TOLERANCE:.0%} may differ)")


# ----------------------------------------------------------------------------- run facts
def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name on one line (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS,
    else what the platform says)."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1]
                break
    except OSError:
        pass
    if not name.strip() and sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout
    name = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    return name or platform.processor() or platform.machine() or "unknown CPU"


def host(device: torch.device) -> dict[str, Any]:
    """The machine a session runs on, as a result's ``hosts`` entry records it (less its
    ``first_task``): seconds compare only between runs on the same one."""
    return {"cpu": cpu_model(), "cores": usable_cores(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _installed_version("torchvision"),
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "clbench": clbench.__version__,
    }


def _installed_version(package: str) -> str | None:
    """The installed version of ``package``, read from its metadata (no import)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the clbench checkout in use, where it is a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(clbench.__file__).parent,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _reference_bytes(input_shapes) -> list[int]:
    sizes = {shape: 4 * count_parameters(reference_net(shape)) for shape in set(input_shapes)}
    return list(np.cumsum([sizes[shape] for shape in input_shapes]).tolist())


# ----------------------------------------------------------------------------- evaluate
def evaluate(
    agent: str | type,
    env_id: str,
    seed: int = 0,
    device: str | torch.device = "auto",
    agent_kwargs: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    progress_bars: bool = False,
    flops: bool = True,
    seal: bool = True,
    learn_timeout: float | None = None,
    retain_threshold: float = 0.95,
    resume: bool | str = False,
    eval_every: int = 1,
) -> Result:
    """Run ``agent`` through the stream ``env_id`` and return its :class:`Result`.

    ``out`` is checked writable first, then written after every task (status ``running``)
    and at the end (``complete``, ``failed`` or ``interrupted``), atomically. ``flops``
    replays every ``learn`` under the FLOP counter and checks that the replay reproduces the
    state (without it, reproducibility is recorded as not checked). ``seal=False`` runs the
    agent in this process (debugging; the result says unsealed). ``learn_timeout`` kills a
    ``learn`` worker that runs longer (seconds). If the agent breaks the contract, raises or
    dies, an :class:`AgentError` names the agent, the task and what was wrong, after the
    result file (with every finished task) was written; SIGINT and SIGTERM end the run as
    ``interrupted`` and raise :class:`KeyboardInterrupt` (:class:`RunInterrupted`).

    With ``out``, the state after every task is kept in the checkpoint folder ``<out>.ckpt``
    (removed when the run completes), and the run holds ``out`` throughout
    (:func:`clbench.checkpoint.hold`): a second run of the same ``out`` while this one lives
    raises :class:`clbench.checkpoint.RunInProgress` before it reads or writes any file of the
    run. ``resume=True`` continues the run of ``out`` from its last finished task; it raises
    :class:`ResumeRefused` (naming the field and both values) when the env, its kwargs, the
    agent, its kwargs, the seed, the device, ``flops``, ``seal``, ``eval_every`` or the versions
    (clbench, torch, ...) differ from the checkpoint's, and when there is no result or
    checkpoint to resume. ``resume="auto"`` (what a sweep wants) resumes where ``out`` and its
    checkpoint pass those checks and starts afresh where they do not (missing, malformed, or
    another run's). A complete ``out`` of the same run is returned as it is, without work.
    ``resume=False`` (default) starts afresh, replacing ``out`` and its checkpoint. A resumed
    result keeps the finished tasks' rows, costs, agent metrics, reproducibility and FWT
    baseline from the file; its ``wall_seconds`` adds up the sessions (each counted to its last
    finished task, the last to its end), ``isolation["resumed_after_tasks"]`` lists where each
    session began and ``hosts`` the machine of each (every result has one entry per session).

    ``eval_every`` N > 1 evaluates every task seen only after every N-th task and the last;
    after the others, only the task just learned (and the next one with ``query_future``),
    so the agent predicts far fewer queries on a long stream. The diagonal, the final row
    and R[t][t+1] are exact (so ACC, BWT, learning accuracy, retained and FWT are), the
    skipped entries are null, forgetting sees the evaluated rows only; the result records
    ``eval_every`` and a note saying so (:func:`clbench.metrics.schedule_note`). It is part
    of the run's identity for ``resume``. Refused under ``scenario="domain"``, where asking
    for one task's queries would tell the agent their task.
    """
    if os.environ.get(WORKER_FLAG):
        raise RuntimeError(
            "clbench.evaluate was called inside a sealed worker, while it imported the agent's "
            "file: put the code that runs the benchmark under `if __name__ == \"__main__\":`")
    name = agent_reference(agent)
    agent_kwargs = jsonable(dict(agent_kwargs or {}), "agent_kwargs")
    env_kwargs = jsonable(dict(env_kwargs or {}), "env_kwargs")
    scenario = env_scenario(env_id, env_kwargs)
    eval_every = metrics.check_eval_every(eval_every)
    if eval_every > 1 and scenario == "domain":
        raise ValueError(
            f"eval_every={eval_every} with scenario='domain': between full evaluations the "
            "agent would be asked for the newest task's queries alone, which tells a "
            "domain-incremental agent their task; use eval_every=1 (or the task scenario)")
    if learn_timeout is not None and not learn_timeout > 0:
        raise ValueError(f"learn_timeout={learn_timeout}: give a positive number of seconds")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume={resume!r}: give True, False or 'auto'")
    if resume and out is None:
        raise ValueError("resume needs out=, the result file of the run to continue")
    if out is not None:
        check_writable(out)
    dev = resolve_device(device)
    spec_kwargs = env_spec_kwargs(env_id, env_kwargs, dev)
    identity = jsonable({"env": {"id": env_id, "kwargs": spec_kwargs},
                         "agent": {"name": name, "kwargs": agent_kwargs}, "seed": int(seed),
                         "device": str(dev), "flops": bool(flops), "seal": bool(seal),
                         "eval_every": eval_every, "versions": versions()},
                        "the run's identity")
    # one run per result file at a time: a second one is refused before it reads or writes
    with hold(out) if out is not None else contextlib.nullcontext():
        earlier, checkpoint, blob, earlier_seconds = None, None, None, 0.0
        if resume:
            try:
                earlier, checkpoint, blob, earlier_seconds = prior_run(out, identity,
                                                                       resume == "auto")
            except (ResumeRefused, ResultFormatError):
                if resume != "auto":
                    raise
        if earlier is not None and earlier.status == "complete":
            return earlier
        start = earlier.n_tasks_done if earlier is not None else 0
        wall_start = time.perf_counter()
        elapsed = lambda: earlier_seconds + time.perf_counter() - wall_start  # noqa: E731
        with _signals_interrupt(), contextlib.ExitStack() as cleanup:
            pool = None
            if seal:  # the zygote imports torch while this process loads the stream's data
                pool = WorkerPool.for_agent(worker_target(name),
                                            {spec_kwargs.get("data_root"), None},
                                            [out] if out is not None else [])
                cleanup.callback(pool.close)
            env = gymnasium.make(env_id, **{**env_kwargs, "device": str(dev), "backend": "torch"},
                                 disable_env_checker=True)
            n_tasks = env.unwrapped.n_tasks
            obs, info = env.reset(seed=seed, options={"start_task": start}
                                  if 0 < start < n_tasks else None)
            result = earlier or Result(
                env={"id": env_id, "kwargs": spec_kwargs, "task_names": list(info["task_names"])},
                agent={"name": name, "kwargs": agent_kwargs},
                seed=int(seed), device=str(dev), versions=identity["versions"],
                git_commit=git_commit(), started_at=_now(), eval_every=eval_every,
                eval_note=metrics.schedule_note(eval_every),
            )
            if result.env["task_names"] != list(info["task_names"]):
                raise ResumeRefused(f"{out} holds the tasks {result.env['task_names']}, this run's "
                                    f"stream has {list(info['task_names'])}: the data or the "
                                    "stream changed; run without --resume to start afresh")
            result.hosts = [*result.hosts, {"first_task": start, **host(dev)}]
            save = (lambda: result.save(out)) if out is not None else (lambda: None)

            def task_done(state: bytes) -> None:
                """After a task: its state into the checkpoint, then the result, then prune."""
                if checkpoint is not None:
                    checkpoint.record(result.n_tasks_done, state, elapsed())
                save()
                if checkpoint is not None:
                    checkpoint.prune(result.n_tasks_done)

            input_shapes = info["input_shapes"]
            if not result.isolation:  # a valid file even if the run ends before its runner starts
                result.isolation = {"mode": "workers" if seal else "in-process", "sandbox": None,
                                    "reason": "the run ended before the agent's first call"}
            runner: SealedRunner | InProcessRunner
            try:
                if seal:
                    runner = SealedRunner(worker_target(name), agent_kwargs, dev, seed,
                                          input_shapes, pool)
                else:
                    runner = InProcessRunner(agent if isinstance(agent, type) else name,
                                             agent_kwargs, dev, seed, input_shapes)
                # before anything is written or learned; the agent's module is imported only
                # where its calls run (a worker, when sealed)
                require_scenario(supported_scenarios(agent) if isinstance(agent, type)
                                 else runner.scenarios(), name, scenario)
                resumed_after = []
                if earlier is not None:
                    if runner.sealed != earlier.sealed:
                        raise ResumeRefused(
                            f"{out} was run {'in' if earlier.sealed else 'outside'} the bwrap "
                            f"sandbox, this session runs {'in' if runner.sealed else 'outside'} it "
                            f"({runner.isolation['reason']}): a result is sealed throughout or "
                            "not at all")
                    resumed_after = [*earlier.isolation.get("resumed_after_tasks", []), start]
                    result.status = "running"
                    result.error = result.failure = result.finished_at = None
                result.sealed, result.isolation = runner.sealed, runner.isolation
                result.isolation.update(
                    threads=torch.get_num_threads(),
                    reproducibility=(("bitwise state on CPU" if dev.type != "cuda" else
                                      f"labels on the training inputs, at most "
                                      f"{CUDA_LABEL_TOLERANCE:.0%} differ on CUDA")
                                     if flops else "not checked: FLOPs off (no replay of learn)"))
                if resumed_after:
                    result.isolation["resumed_after_tasks"] = resumed_after
                if out is not None and earlier is None:
                    checkpoint = Checkpoint.start(out, identity)
                save()
                _run_stream(runner, env, obs, info, result, task_done, flops, learn_timeout,
                            progress_bars, retain_threshold, start, blob)
            except (ScenarioRefused, ResumeRefused):
                raise
            except WorkerFailure as failure:
                task_id = failure.task_id if failure.task_id is not None else result.n_tasks_done
                message = _describe(name, min(task_id, len(input_shapes) - 1), result.env,
                                    failure.stage, str(failure))
                _finish(result, save, elapsed(), "failed", message,
                        {"kind": failure.kind, "stage": failure.stage, "task_id": task_id,
                         "traceback": failure.traceback})
                raise AgentError(message, result) from None
            except Exception as error:  # the harness's own failure: still a terminal status
                _finish(result, save, elapsed(), "failed",
                        f"the harness failed after {result.n_tasks_done} of {len(input_shapes)} "
                        f"tasks: {type(error).__name__}: {error}",
                        {"kind": "harness_error", "stage": None, "task_id": result.n_tasks_done,
                         "traceback": None})
                raise
            except KeyboardInterrupt as interrupt:
                signal_name = getattr(interrupt, "signal_name", "SIGINT")
                _finish(result, save, elapsed(), "interrupted",
                        f"interrupted by {signal_name} after {result.n_tasks_done} of "
                        f"{len(input_shapes)} tasks",
                        {"kind": "interrupted", "stage": None, "task_id": result.n_tasks_done,
                         "traceback": None})
                raise
        result.status = "complete"
        result.finished_at = _now()
        result.wall_seconds = elapsed()
        result.costs["process_peak_memory_bytes"] = costs.process_peak_memory_bytes()
        save()
        if checkpoint is not None:
            checkpoint.remove()  # the result is final; no partial checkpoint may outlive it
        return result


def env_spec_kwargs(env_id: str, env_kwargs: dict[str, Any], device: torch.device
                    ) -> dict[str, Any]:
    """The make() kwargs a run records: the registered ones, the user's, the device."""
    registered = gymnasium.spec(env_id).kwargs
    merged = {**registered, **env_kwargs, "device": str(device)}
    return jsonable({k: v for k, v in merged.items() if k != "backend"}, "env kwargs")


def prior_run(out: str | os.PathLike, identity: dict[str, Any], optional: bool
              ) -> tuple[Result | None, Checkpoint | None, bytes | None, float]:
    """The run of ``out`` to resume, its checkpoint, the state after its last finished task
    and its wall seconds up to then, after every check that it is this run: the complete
    result alone when there is nothing left to do; nothing when there is nothing to resume
    and ``optional``; else :class:`ResumeRefused` (or ``ResultFormatError``)."""
    out = Path(out)
    afresh = "run without --resume to start afresh (which replaces it)"
    if not out.exists():
        if optional:
            return None, None, None, 0.0
        raise ResumeRefused(f"nothing to resume: there is no result file {out}; run without "
                            "--resume to start")
    result = load_result(out)
    recorded = {"env": {"id": result.env["id"], "kwargs": result.env["kwargs"]},
                "agent": result.agent, "seed": result.seed, "device": result.device,
                "eval_every": result.eval_every}
    if result.status == "complete":
        recorded.update(seal=result.isolation.get("mode") == "workers",
                        flops=any(value is not None for value in result.reproducible))
        wanted = {key: identity[key] for key in recorded}
        found = first_difference(recorded, wanted)
        if found:
            raise ResumeRefused(f"cannot resume {out}: it is a complete run that differs in "
                                f"{found.replace('(checkpoint)', '(result)')}")
        Checkpoint(folder_for(out), identity, {}).remove()  # one a kill left behind
        return result, None, None, 0.0
    checkpoint = Checkpoint.open(out)
    if checkpoint is None:
        if optional:
            return None, None, None, 0.0
        raise ResumeRefused(
            f"cannot resume {out} ({result.status}, {result.n_tasks_done} of "
            f"{len(result.env['task_names'])} tasks finished): it has no checkpoint "
            f"{folder_for(out)} (written by a clbench without resume, or removed); {afresh}")
    # a checkpoint written before eval_every existed evaluated every task
    stored = {"eval_every": 1, **checkpoint.identity}
    found = first_difference(stored, identity)
    if found:
        raise ResumeRefused(f"cannot resume {out}: this run differs from the checkpoint's in "
                            f"{found}; rerun with the checkpoint's value, or {afresh}")
    found = first_difference({key: stored.get(key) for key in recorded}, recorded)
    if found:
        raise ResumeRefused(f"cannot resume {out}: the result and its checkpoint are not of "
                            f"one run ({found.replace('(this run)', '(result)')}); {afresh}")
    blob, seconds = checkpoint.state(result.n_tasks_done)
    if blob is not None and len(blob) != result.storage["bytes"][-1]:
        raise ResumeRefused(f"the checkpoint's state after {result.n_tasks_done} tasks has "
                            f"{len(blob)} bytes, the result records "
                            f"{result.storage['bytes'][-1]}: they are not of one run; {afresh}")
    return result, checkpoint, blob, seconds


def _run_stream(runner, env, obs, info, result: Result, task_done: Callable[[bytes], None],
                flops: bool, learn_timeout: float | None, progress_bars: bool,
                threshold: float, start: int = 0, blob: bytes | None = None) -> None:
    """Every task from ``start`` (whose previous state is ``blob``): learn (timed), replay
    (FLOPs + reproducibility), predict the queries the schedule asks for (all of them with
    ``result.eval_every`` 1), step; ``task_done`` keeps each task's state."""
    input_shapes = info["input_shapes"]
    reference_bytes = _reference_bytes(input_shapes)
    n_tasks = len(input_shapes)
    dev = env.unwrapped.device
    if env.unwrapped.query_future and result.fwt_baseline is None:
        fresh = runner.predict(None, obs["query_inputs"], obs["query_task_ids"], 0, False,
                               FRESH_AGENT)
        result.fwt_baseline = [float(a) for a in env.unwrapped.score(fresh.labels)]
    with _task_bar(n_tasks, start, result.agent["name"], progress_bars) as bar:
        for task_id in range(start, n_tasks):
            task = info["task"]
            with progress.inner_bar(f"learn {task.name}", progress_bars):
                learned = runner.learn(blob, task, False, learn_timeout)
            reproducible = None
            if flops:
                replay = runner.learn(blob, task, True, learn_timeout)
                problem = _reproduction_problem(runner, learned, replay, task, dev)
                if problem is not None:
                    raise WorkerFailure(
                        "irreproducible", "learn (replay)",
                        f"replaying learn from the previous state with the same seeds did not "
                        f"reproduce its state ({problem}): something outside the state was "
                        "used (hidden storage, files, the clock), or learn is not "
                        "deterministic under the harness's seeds", task_id=task_id)
                reproducible = True
            blob = learned.state
            asked = _tasks_asked(task_id, n_tasks, result.eval_every,
                                 env.unwrapped.query_future)
            queries = (slice(None) if asked is None else
                       torch.isin(obs["query_task_ids"], torch.tensor(asked, device=dev)))
            inputs, ids = obs["query_inputs"][queries], obs["query_task_ids"][queries]
            answer = runner.predict(blob, inputs, ids, task_id, flops)
            labels = answer.labels
            if asked is not None:  # placeholder zeros for the queries not asked
                labels = torch.zeros_like(obs["query_task_ids"])
                labels[queries] = answer.labels
            obs, _, _, _, info = env.step(labels)
            row = [float(a) if asked is None or j in asked else None
                   for j, a in enumerate(info["accuracies"])]
            _record(result, row, len(blob), reference_bytes[task_id],
                    {"learn_seconds": learned.seconds,
                     "learn_flops": replay.flops if flops else None,
                     "learn_peak_memory_bytes": learned.peak_memory_bytes,
                     "predict_seconds": answer.seconds, "predict_flops": answer.flops},
                    learned.metrics, threshold)
            result.reproducible.append(reproducible)
            task_done(blob)
            bar.update(1)
            if result.metrics["acc"] is not None:  # None after a row the schedule skipped
                bar.set_postfix(acc=f"{result.metrics['acc']:.3f}")


def _tasks_asked(task_id: int, n_tasks: int, eval_every: int, query_future: bool
                 ) -> list[int] | None:
    """The tasks whose queries the agent is asked after ``task_id``: None for every task
    the env asks about (a full row of R), else the task just learned and, with future
    queries, the next one (FWT's R[t][t+1])."""
    if metrics.full_row(task_id, n_tasks, eval_every):
        return None
    return [task_id, task_id + 1] if query_future and task_id + 1 < n_tasks else [task_id]


def check_writable(out: str | os.PathLike) -> None:
    """Fail before any work when ``out`` cannot be written (it is written after every task)."""
    target = Path(out)
    if target.is_dir():
        raise ValueError(f"--out {target} is a folder; give a file path such as "
                         f"{target / 'result.json'}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".probe")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"--out {target}: cannot write there ({error.strerror or error}); "
                         "choose a writable folder") from None


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Within: SIGTERM (like SIGINT) raises :class:`RunInterrupted`, an orderly stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number, _frame):
        raise RunInterrupted(signal.Signals(number).name)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM,
                                                                   signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _describe(name: str, task_id: int, env: dict, stage: str, detail: str) -> str:
    where = (f"task {task_id} ({env['task_names'][task_id]})" if task_id != UNTOLD_TASK
             else "the queries of every task seen (domain-incremental, task not told)")
    return f"agent {name!r} failed in {stage} on {where}: {detail}"


def _finish(result: Result, save: Callable[[], Any], wall_seconds: float, status: str,
            message: str, failure: dict[str, Any]) -> None:
    result.status, result.error, result.failure = status, message, failure
    result.finished_at = _now()
    result.wall_seconds = wall_seconds
    save()


def _record(result: Result, row: list[float | None], state_bytes: int, reference_bytes: int,
            task_costs: dict[str, Any], agent_figures: dict, threshold: float) -> None:
    """Append one task's row (None where not evaluated); ``task_costs`` holds every one of
    ``results.COST_KEYS``."""
    result.accuracy.append(row)
    result.metrics = metrics.summarize(result.accuracy, threshold, result.fwt_baseline)
    result.storage["bytes"].append(state_bytes)
    result.storage["reference_fp32_bytes"].append(reference_bytes)
    result.storage["compression"] = metrics.compression(
        result.storage["bytes"], result.storage["reference_fp32_bytes"])
    for key in COST_KEYS:
        result.costs[key].append(task_costs[key])
    result.agent_metrics.append(agent_figures)


@contextlib.contextmanager
def _task_bar(n_tasks: int, done: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=n_tasks, initial=done, desc=name, unit="task",
               disable=None if enabled else True)
    try:
        yield bar
    finally:
        bar.close()
