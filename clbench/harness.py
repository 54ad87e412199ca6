"""The evaluation harness: drives the task-stream env with an agent and writes a result.

Between tasks an agent *is* its state. After every ``learn`` the harness serialises
``agent.state_dict()`` (tensors and plain metadata, loadable with
``torch.load(weights_only=True)``), counts its bytes, builds a fresh agent from the same
constructor arguments, loads the state, and continues with that fresh agent, for evaluation
and for the next task. Whatever an agent keeps outside its state is therefore lost, and the
storage footprint cannot be under-reported. At the end the final state is evaluated again in
a fresh Python process and must reproduce the final accuracy row (this also catches state
hidden in class attributes or module globals).

Scoring happens in the environment (``env.step``): there is one evaluation path.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

import clbench
from clbench import costs, metrics, progress
from clbench.agent import load_agent_class, require_scenario
from clbench.devices import resolve_device
from clbench.env import UNTOLD_TASK, crop, env_scenario
from clbench.nets import count_parameters, reference_net
from clbench.results import COST_KEYS, Result

PLAIN_TYPES = (str, int, float, bool, type(None))
VERIFY_FLAG = "CLBENCH_VERIFYING"


class AgentError(RuntimeError):
    """An agent broke the contract or raised; ``result`` holds every finished task."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------- agents
def agent_reference(agent: str | type) -> tuple[type, str]:
    """(class, name) for a registered name, a ``module:Class`` / ``file.py:Class`` or a class."""
    if isinstance(agent, str):
        return load_agent_class(agent), agent
    if isinstance(agent, type):
        if "<locals>" in agent.__qualname__:
            raise ValueError(
                f"agent class {agent.__qualname__} is defined inside a function; define it at "
                "module level so that a fresh process can import it for the final check")
        module = agent.__module__
        if module == "__main__":
            module = getattr(sys.modules["__main__"], "__file__", None)
            if module is None:
                raise ValueError(
                    f"agent class {agent.__qualname__} lives in an interactive session; put it "
                    "in a module or file so that a fresh process can import it")
        return agent, f"{module}:{agent.__qualname__}"
    raise TypeError(
        f"agent must be a registered name, a 'module:Class' path or a class, not "
        f"{type(agent).__name__}: the harness builds fresh agents from constructor arguments")


def check_state(value: Any, where: str = "state") -> None:
    """States are tensors plus plain metadata; name the first entry that is not."""
    if torch.is_tensor(value) or isinstance(value, PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_state(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; "
                                "use str or int keys")
            check_state(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; a state may hold only tensors, "
                    "str, int, float, bool, None, lists and dicts (it must load with "
                    "torch.load(weights_only=True))")


def serialize_state(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def deserialize_state(blob: bytes, device: torch.device) -> dict[str, Any]:
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)


def build_agent(cls: type, kwargs: dict[str, Any], device: torch.device,
                state: bytes | None) -> Any:
    """A fresh agent from constructor arguments, loaded from serialised ``state`` if any."""
    agent = cls(device=device, **kwargs)
    if state is not None:
        agent.load_state_dict(deserialize_state(state, device))
    return agent


def check_predictions(labels: Any, n_inputs: int, device: torch.device) -> torch.Tensor:
    """Validate ``predict``'s output; return int64 labels on ``device``."""
    if not torch.is_tensor(labels):
        if not isinstance(labels, np.ndarray):
            raise TypeError(f"predict returned a {type(labels).__name__}; return a tensor of "
                            "labels")
        labels = torch.from_numpy(labels)
    if tuple(labels.shape) != (n_inputs,):
        raise ValueError(f"predict returned shape {tuple(labels.shape)} for {n_inputs} inputs; "
                         f"expected ({n_inputs},)")
    if labels.is_floating_point() or labels.is_complex():
        if torch.isnan(labels).any():
            raise ValueError("predict returned NaN labels")
        raise TypeError(f"predict returned dtype {labels.dtype}; return integer or bool labels")
    labels = labels.to(device=device, dtype=torch.int64)
    outside = (labels != 0) & (labels != 1)
    if outside.any():
        raise ValueError(f"predict returned labels other than 0 and 1, e.g. "
                         f"{labels[outside][:5].tolist()}")
    return labels


def predict_queries(agent: Any, obs: dict[str, Any], input_shapes, device) -> torch.Tensor:
    """Ask ``agent`` for a label per query, task by task, at each task's native shape; in the
    domain-incremental scenario (ids ``UNTOLD_TASK``) all at once, with ``task_id=None``."""
    task_ids = obs["query_task_ids"]
    labels = torch.empty_like(task_ids)
    for task_id in torch.unique(task_ids).tolist():
        mask = task_ids == task_id
        told = None if task_id == UNTOLD_TASK else task_id
        inputs = crop(obs["query_inputs"][mask], input_shapes[0 if told is None else told])
        with torch.no_grad():
            raw = agent.predict(inputs, told)
        try:
            labels[mask] = check_predictions(raw, len(inputs), device)
        except (TypeError, ValueError) as error:
            raise _ContractError(task_id, "predict", error) from None
    return labels


class _ContractError(Exception):
    def __init__(self, task_id: int, method: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.task_id, self.method, self.error = task_id, method, error


# ----------------------------------------------------------------------------- run facts
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


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be plain JSON values (numbers, strings, lists, dicts): "
                         f"{error}") from None


def _reference_bytes(input_shapes) -> list[int]:
    sizes = {shape: 4 * count_parameters(reference_net(shape)) for shape in set(input_shapes)}
    return list(np.cumsum([sizes[shape] for shape in input_shapes]).tolist())


def _seed(seed: int, task_id: int, purpose: int) -> None:
    # One fixed seed per (run, task, purpose: 0 = build the agent that learns the task,
    # 1 = learn), so the FLOP twin replays the timed call exactly.
    torch.manual_seed(int(np.random.SeedSequence([seed, task_id, purpose]).generate_state(1)[0]))


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
    verify: bool = True,
    retain_threshold: float = 0.95,
) -> Result:
    """Run ``agent`` through the stream ``env_id`` and return its :class:`Result`.

    ``out`` is written after every task (status ``running``), and at the end (``complete``
    or ``failed``), atomically. ``flops`` counts learn FLOPs in a twin call, so the timed
    call is not slowed; ``verify`` re-evaluates the final state in a fresh process. If the
    agent breaks the contract or raises, an :class:`AgentError` names the agent, the task and
    what was wrong, after the result file (with every finished task) was written.
    """
    if os.environ.get(VERIFY_FLAG):
        raise RuntimeError(
            "clbench.evaluate was called while the fresh-process check imported the agent's "
            "file: put the code that runs the benchmark under `if __name__ == \"__main__\":`")
    cls, name = agent_reference(agent)
    agent_kwargs = _jsonable(dict(agent_kwargs or {}), "agent_kwargs")
    env_kwargs = _jsonable(dict(env_kwargs or {}), "env_kwargs")
    require_scenario(cls, name, env_scenario(env_id, env_kwargs))
    dev = resolve_device(device)
    wall_start = time.perf_counter()
    # the fresh interpreter starts first, so its start-up overlaps loading the data too
    checker = FreshProcessCheck(name, agent_kwargs, env_id, env_kwargs, seed, dev) if verify \
        else None
    try:
        env = gymnasium.make(env_id, **{**env_kwargs, "device": str(dev), "backend": "torch"},
                             disable_env_checker=True)
        obs, info = env.reset(seed=seed)
    except BaseException:
        if checker is not None:
            checker.close()
        raise
    spec_kwargs = {k: v for k, v in env.spec.kwargs.items() if k not in ("backend",)}
    result = Result(
        env={"id": env_id, "kwargs": _jsonable(spec_kwargs, "env kwargs"),
             "task_names": list(info["task_names"])},
        agent={"name": name, "kwargs": agent_kwargs},
        seed=int(seed), device=str(dev), versions=versions(), git_commit=git_commit(),
        started_at=_now(),
    )
    input_shapes = info["input_shapes"]
    reference_bytes = _reference_bytes(input_shapes)
    n_tasks = len(input_shapes)
    save = (lambda: result.save(out)) if out is not None else (lambda: None)
    blob: bytes | None = None
    task = info["task"]
    stage = "construct"
    try:
        _seed(seed, 0, 0)
        current = build_agent(cls, agent_kwargs, dev, None)
        with _task_bar(n_tasks, name, progress_bars) as bar:
            for task_id in range(n_tasks):
                task = info["task"]
                stage = "learn"
                with progress.inner_bar(f"learn {task.name}", progress_bars):
                    _seed(seed, task_id, 1)
                    _, seconds, peak = costs.timed(lambda a=current, t=task: a.learn(t), dev)
                stage = "metrics"
                agent_figures = _agent_metrics(current)
                stage = "state_dict"
                state = current.state_dict()
                check_state(state)
                previous, blob = blob, serialize_state(state)
                learn_flops = None
                if flops:
                    stage = "learn (FLOP count)"
                    learn_flops = _twin_flops(cls, agent_kwargs, dev, previous, seed, task)
                stage = "load_state_dict"
                _seed(seed, task_id + 1, 0)
                current = build_agent(cls, agent_kwargs, dev, blob)
                stage = "predict"
                labels, predict_seconds, _ = costs.timed(
                    lambda a=current, o=obs: predict_queries(a, o, input_shapes, dev), dev)
                predict_flops = None
                if flops:
                    stage = "predict (FLOP count)"
                    predict_flops = costs.count_flops(
                        lambda a=current, o=obs: predict_queries(a, o, input_shapes, dev))
                obs, _, _, _, info = env.step(labels)
                _record(result, info["accuracies"], len(blob), reference_bytes[task_id],
                        {"learn_seconds": seconds, "learn_flops": learn_flops,
                         "learn_peak_memory_bytes": peak, "predict_seconds": predict_seconds,
                         "predict_flops": predict_flops},
                        agent_figures, retain_threshold)
                save()
                bar.update(1)
                bar.set_postfix(acc=f"{result.metrics['acc']:.3f}")
        if checker is not None:
            result.verification = checker.check(blob, result.accuracy[-1])
        else:
            result.verification = {"fresh_process": False, "matches": None,
                                   "reason": "skipped by the caller (verify=False)"}
        matches = result.verification["matches"] is not False
        result.status = "complete" if matches else "failed"
        if not matches:
            result.error = result.verification["reason"]
    except _ContractError as error:
        _fail(result, save, wall_start, _describe(name, error.task_id, result.env, error.method,
                                                  error.error))
        raise AgentError(result.error, result) from error.error
    except KeyboardInterrupt:
        _fail(result, save, wall_start,
              f"interrupted after {result.n_tasks_done} of {n_tasks} tasks")
        raise
    except Exception as error:
        _fail(result, save, wall_start, _describe(name, task.id, result.env, stage, error))
        raise AgentError(result.error, result) from error
    finally:
        if checker is not None:
            checker.close()
    result.finished_at = _now()
    result.wall_seconds = time.perf_counter() - wall_start
    result.costs["process_peak_memory_bytes"] = costs.process_peak_memory_bytes()
    save()
    return result


def _describe(name: str, task_id: int, env: dict, stage: str, error: BaseException) -> str:
    where = (f"task {task_id} ({env['task_names'][task_id]})" if task_id != UNTOLD_TASK
             else "the queries of every task seen (domain-incremental, task not told)")
    return f"agent {name!r} failed in {stage} on {where}: {type(error).__name__}: {error}"


def _fail(result: Result, save: Callable[[], Any], wall_start: float, message: str) -> None:
    result.status, result.error = "failed", message
    result.finished_at = _now()
    result.wall_seconds = time.perf_counter() - wall_start
    save()


def _agent_metrics(agent: Any) -> dict[str, Any]:
    method = getattr(agent, "metrics", None)
    if method is None:
        return {}
    return _jsonable(method(), "metrics()")


def _twin_flops(cls, kwargs, device, previous: bytes | None, seed: int, task) -> int:
    """Replay the task's ``learn`` on a twin rebuilt from the previous state, counting FLOPs."""
    _seed(seed, task.id, 0)
    twin = build_agent(cls, kwargs, device, previous)
    _seed(seed, task.id, 1)
    return costs.count_flops(lambda: twin.learn(task))


def _record(result: Result, accuracies, state_bytes: int, reference_bytes: int,
            task_costs: dict[str, Any], agent_figures: dict, threshold: float) -> None:
    """Append one task's row; ``task_costs`` holds every one of ``results.COST_KEYS``."""
    result.accuracy.append([float(a) for a in accuracies])
    result.metrics = metrics.summarize(result.accuracy, threshold)
    result.storage["bytes"].append(state_bytes)
    result.storage["reference_fp32_bytes"].append(reference_bytes)
    result.storage["compression"] = metrics.compression(
        result.storage["bytes"], result.storage["reference_fp32_bytes"])
    for key in COST_KEYS:
        result.costs[key].append(task_costs[key])
    result.agent_metrics.append(agent_figures)


@contextlib.contextmanager
def _task_bar(n_tasks: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=n_tasks, desc=name, unit="task", disable=None if enabled else True)
    try:
        yield bar
    finally:
        bar.close()


# ----------------------------------------------------------------------------- fresh process
class FreshProcessCheck:
    """Evaluates the final state in a new interpreter and compares the final accuracy row.

    The interpreter starts with the run, at the lowest CPU priority, so its start-up
    (importing torch, rebuilding the episode) overlaps learning; at the end it receives the
    path of the final state. What it still adds to a run's wall time (about a second on a
    2-core CPU) does not grow with the run.
    """

    def __init__(self, name: str, agent_kwargs: dict, env_id: str, env_kwargs: dict,
                 seed: int, device: torch.device) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="clbench-verify-"))
        request = {"agent": name, "agent_kwargs": agent_kwargs, "env_id": env_id,
                   "env_kwargs": env_kwargs, "seed": seed, "device": str(device)}
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clbench.verify"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def check(self, blob: bytes, expected_row: list[float]) -> dict[str, Any]:
        state_path = self.folder / "state.pt"
        state_path.write_bytes(blob)
        try:
            stdout, stderr = self.process.communicate(str(state_path) + "\n")
        except BrokenPipeError:
            stdout, stderr = self.process.communicate()
        if self.process.returncode != 0 or not stdout.strip():
            last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
            return {"fresh_process": True, "matches": False, "final_row": None,
                    "reason": f"the fresh-process check could not evaluate the final state: "
                              f"{last}"}
        report = json.loads(stdout.strip().splitlines()[-1])
        row = report["accuracies"]
        matches = len(row) == len(expected_row) and all(
            math.isclose(a, b, abs_tol=1e-12) for a, b in zip(row, expected_row, strict=True))
        reason = None if matches else (
            f"the final state evaluated in a fresh process gives accuracies {row} instead of "
            f"{expected_row}: the agent keeps something outside its state_dict (class "
            "attributes, globals) or predicts non-deterministically")
        return {"fresh_process": True, "matches": matches, "reason": reason, "final_row": row,
                "predict_seconds": report["predict_seconds"]}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        shutil.rmtree(self.folder, ignore_errors=True)
