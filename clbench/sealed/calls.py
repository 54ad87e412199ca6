"""The agent calls themselves: build an agent from a state, learn, predict, serialise.

These functions run inside a sealed worker (or in the harness process in the debugging
in-process mode). Each call starts from constructor arguments and the serialised state of
the previous task, and nothing else. Every random generator an agent may use (torch, numpy,
Python's ``random``) is seeded from (run seed, task, purpose), so the replay of a ``learn``
starts exactly where the timed call started.
"""

from __future__ import annotations

import io
import json
import random
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clbench import costs
from clbench.env import UNTOLD_TASK, crop
from clbench.tasks import Task

PLAIN_TYPES = (str, int, float, bool, type(None))

# What a seed is drawn for; the same (run seed, task, purpose) always gives the same seed.
BUILD, LEARN, PREDICT, FRESH_AGENT = 0, 1, 2, 3


class AgentCallError(Exception):
    """The agent's code raised, or broke the contract, in ``stage`` of a call.

    ``kind`` is ``"agent_error"`` (the agent raised, or called ``sys.exit``) or
    ``"contract"`` (it returned something the contract forbids); ``task_id`` is the task the
    failing ``predict`` was asked about, where it is not the call's own task.
    """

    def __init__(self, stage: str, error: BaseException, kind: str = "agent_error",
                 task_id: int | None = None) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.stage, self.kind, self.task_id = stage, kind, task_id
        self.error_type = type(error).__name__
        self.traceback = "".join(traceback.format_exception(error))


def seed_everything(seed: int, task_id: int, purpose: int) -> None:
    """Seed torch, numpy and ``random`` from (run seed, task, purpose)."""
    value = int(np.random.SeedSequence([seed, task_id, purpose]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


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


def deserialize_state(blob: bytes, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a serialised state without running code from it (``weights_only=True``)."""
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)


def build_agent(cls: type, kwargs: dict[str, Any], device: torch.device,
                state: bytes | None) -> Any:
    """A fresh agent from constructor arguments, loaded from serialised ``state`` if any."""
    with _stage("construct"):
        agent = cls(device=device, **kwargs)
    if state is not None:
        with _stage("load_state_dict"):
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


def predict_queries(agent: Any, inputs: torch.Tensor, task_ids: torch.Tensor,
                    input_shapes, device: torch.device) -> torch.Tensor:
    """One ``predict`` call per task id, at that task's native shape; int64 labels. In the
    domain-incremental scenario (ids ``UNTOLD_TASK``) one call for every query, with
    ``task_id=None``."""
    labels = torch.empty_like(task_ids)
    # one stable sort instead of a mask over every query per task (k tasks: O(k n) -> O(n log n))
    order = torch.argsort(task_ids, stable=True)
    ids, counts = torch.unique_consecutive(task_ids[order], return_counts=True)
    for task_id, index in zip(ids.tolist(), torch.split(order, counts.tolist()), strict=True):
        told = None if task_id == UNTOLD_TASK else task_id
        batch = crop(inputs.index_select(0, index), input_shapes[0 if told is None else told])
        with torch.no_grad(), _stage("predict", task_id=task_id):
            raw = agent.predict(batch, told)
        try:
            labels[index] = check_predictions(raw, len(batch), device)
        except (TypeError, ValueError) as error:
            raise AgentCallError("predict", error, "contract", task_id) from None
    return labels


@dataclass
class LearnOutcome:
    """What one ``learn`` call leaves: the state and its cost (seconds or FLOPs)."""

    state: bytes
    seconds: float | None = None
    peak_memory_bytes: int | None = None
    flops: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class PredictOutcome:
    labels: torch.Tensor
    seconds: float | None = None
    flops: int | None = None


def learn_call(cls: type, kwargs: dict[str, Any], device: torch.device,
               previous: bytes | None, task: Task, seed: int, count_flops: bool) -> LearnOutcome:
    """Build from ``previous``, learn ``task`` (timed, or under the FLOP counter), serialise."""
    seed_everything(seed, task.id, BUILD)
    agent = build_agent(cls, kwargs, device, previous)
    seed_everything(seed, task.id, LEARN)
    outcome = LearnOutcome(b"")
    with _stage("learn"):
        if count_flops:
            outcome.flops = costs.count_flops(lambda: agent.learn(task))
        else:
            _, outcome.seconds, outcome.peak_memory_bytes = costs.timed(
                lambda: agent.learn(task), device)
    if not count_flops:
        with _stage("metrics"):
            outcome.metrics = agent_metrics(agent)
    with _stage("state_dict"):
        state = agent.state_dict()
    try:
        check_state(state)
    except TypeError as error:
        raise AgentCallError("state_dict", error, "contract") from None
    outcome.state = serialize_state(state)
    return outcome


def predict_call(cls: type, kwargs: dict[str, Any], device: torch.device, state: bytes | None,
                 inputs: torch.Tensor, task_ids: torch.Tensor, input_shapes, seed: int,
                 seed_task: int, count_flops: bool, purpose: int = PREDICT) -> PredictOutcome:
    """Build from ``state`` and label every query (timed, or under the FLOP counter)."""
    seed_everything(seed, seed_task, purpose)
    agent = build_agent(cls, kwargs, device, state)
    call = lambda: predict_queries(agent, inputs, task_ids, input_shapes, device)  # noqa: E731
    if count_flops:
        answers: list[torch.Tensor] = []
        flops = costs.count_flops(lambda: answers.append(call()))
        return PredictOutcome(answers[0], flops=flops)
    labels, seconds, _ = costs.timed(call, device)
    return PredictOutcome(labels, seconds=seconds)


def agent_metrics(agent: Any) -> dict[str, Any]:
    method = getattr(agent, "metrics", None)
    if method is None:
        return {}
    return jsonable(method(), "metrics()")


def jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be plain JSON values (numbers, strings, lists, dicts): "
                         f"{error}") from None


class _stage:
    """Turn any exception the agent's code raises inside into an :class:`AgentCallError`."""

    def __init__(self, stage: str, task_id: int | None = None) -> None:
        self.stage, self.task_id = stage, task_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, _tb) -> bool:
        if error is None or isinstance(error, (AgentCallError, KeyboardInterrupt)):
            return False
        raise AgentCallError(self.stage, error, task_id=self.task_id) from error
