"""The flat table of clbench's registered environments (``clbench/`` namespace, v0).

Every stream parameter can be overridden as a ``make()`` kwarg and is recorded in the spec.
The ``*5k`` ids run offline on the built-in ``mnist5k`` data; the others need the full
datasets under the data root (or a network that reaches torchvision's mirrors). The
``Domain*`` ids are the split streams in the domain-incremental scenario (``scenario="domain"``:
the agent is not told a query's task); every other id is task-incremental. Validation runs
are the same ids with ``evaluation="validation"``.
"""

import difflib
import inspect
import numbers
from collections.abc import Mapping
from typing import Any

import gymnasium
from gymnasium.envs.registration import EnvSpec, register

from clbench.tasks import (
    TaskSpec,
    check_scenario,
    check_stream,
    one_vs_rest,
    require_one_labelling,
    stream_specs,
)

ENTRY_POINT = "clbench.env.task_stream:TaskStreamEnv"
NAMESPACE = "clbench/"
PAPER_POSITIVE_FRACTION = 0.4
# gymnasium.make's own keyword arguments, accepted beside the environment's
MAKE_OPTIONS = ("max_episode_steps", "disable_env_checker")


def _register(env_id: str, **kwargs) -> None:
    register(id=env_id, entry_point=ENTRY_POINT, kwargs=kwargs)


_register("clbench/SplitMNIST-v0", stream="split", dataset="mnist")
_register("clbench/OneVsRestMNIST-v0", stream="one_vs_rest", dataset="mnist",
          positive_fraction=PAPER_POSITIVE_FRACTION)
_register("clbench/TupleMNIST-v0", stream="tuples", dataset="mnist", n_tasks=333,
          positive_fraction=PAPER_POSITIVE_FRACTION)
_register("clbench/SplitFashionMNIST-v0", stream="split", dataset="fashion_mnist")
_register("clbench/OneVsRestFashionMNIST-v0", stream="one_vs_rest", dataset="fashion_mnist",
          positive_fraction=PAPER_POSITIVE_FRACTION)
_register("clbench/SplitCIFAR10-v0", stream="split", dataset="cifar10")
_register("clbench/OneVsRestCIFAR10-v0", stream="one_vs_rest", dataset="cifar10",
          positive_fraction=PAPER_POSITIVE_FRACTION)
_register("clbench/SplitCIFAR100-v0", stream="split", dataset="cifar100")
_register("clbench/MixedMNISTCIFAR10-v0",
          tasks=[spec.name for spec in one_vs_rest("mnist", 5) + one_vs_rest("cifar10", 1)],
          positive_fraction=PAPER_POSITIVE_FRACTION)
_register("clbench/DomainSplitMNIST-v0", stream="split", dataset="mnist", scenario="domain")
_register("clbench/DomainSplitFashionMNIST-v0", stream="split", dataset="fashion_mnist",
          scenario="domain")
_register("clbench/SplitMNIST5k-v0", stream="split", dataset="mnist5k")
_register("clbench/DomainSplitMNIST5k-v0", stream="split", dataset="mnist5k", scenario="domain")
_register("clbench/OneVsRestMNIST5k-v0", stream="one_vs_rest", dataset="mnist5k",
          positive_fraction=PAPER_POSITIVE_FRACTION)
_register("clbench/TupleMNIST5k-v0", stream="tuples", dataset="mnist5k", n_tasks=50,
          positive_fraction=PAPER_POSITIVE_FRACTION)


# ------------------------------------------------------------------ checks before any work
def check_env_id(env_id: Any) -> EnvSpec:
    """The spec of a registered clbench environment; otherwise a :class:`ValueError` that
    names the closest registered ids."""
    if not isinstance(env_id, str):
        raise ValueError(f"environment id {env_id!r} must be a string like "
                         "'clbench/SplitMNIST5k-v0'")
    if env_id not in gymnasium.registry:
        ids = {i.lower(): i for i in gymnasium.registry if i.startswith(NAMESPACE)}
        guess = env_id.lower() if "/" in env_id else NAMESPACE + env_id.lower()
        close = [ids[i] for i in difflib.get_close_matches(guess, ids, n=3, cutoff=0.6)]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown environment {env_id!r}{hint} (`clbench list` shows them all)")
    spec = gymnasium.spec(env_id)
    if spec.entry_point != ENTRY_POINT:
        raise ValueError(f"{env_id!r} is not a clbench task stream; `clbench list` shows those")
    return spec


def env_arguments() -> list[str]:
    """The keyword arguments of the task-stream environment (what make() accepts)."""
    from clbench.env.task_stream import TaskStreamEnv

    return [name for name in inspect.signature(TaskStreamEnv).parameters]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_value(env_id: str, name: str, value: Any) -> None:
    minimum = {"max_train_per_task": 2, "max_test_per_task": 2}
    bad = None
    if name == "n_tasks" and value is not None and not _is_int(value):
        bad = "an integer, or null"  # its range depends on the stream: check_stream says it
    elif name in minimum and value is not None and not (_is_int(value) and value >= minimum[name]):
        bad = f"an integer of at least {minimum[name]}, or null"
    elif name == "positive_fraction" and value is not None and not (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1):
        bad = "a number between 0 and 1 (exclusive), or null"
    elif name == "query_future" and not isinstance(value, bool):
        bad = "true or false"
    elif name in ("stream", "dataset") and not isinstance(value, str):
        bad = "a string"
    elif name == "data_root" and value is not None and not isinstance(value, str):
        bad = "a folder path"
    elif name == "tasks" and value is not None and not (
            isinstance(value, list | tuple) and all(isinstance(t, str | TaskSpec) for t in value)):
        bad = "a list of task names like 'mnist:1|2,3'"
    if bad:
        raise ValueError(f"{env_id}: {name}={value!r} must be {bad}")


def check_env_kwargs(env_id: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Check an environment id and its make() kwargs in microseconds, before any data is
    loaded: unknown ids (with the close matches), unknown kwargs (with the accepted ones),
    values of the wrong type or range, streams that cannot exist (with the most tasks
    possible) and domain-incremental streams without one labelling. Returns the registered
    kwargs merged with ``kwargs``; raises :class:`ValueError`."""
    spec = check_env_id(env_id)
    accepted = env_arguments()
    unknown = [key for key in kwargs if key not in accepted and key not in MAKE_OPTIONS]
    if unknown:
        raise ValueError(f"{env_id}: unknown make() argument(s) {', '.join(map(repr, unknown))};"
                         f" accepted: {', '.join(accepted)}")
    merged = {**spec.kwargs, **kwargs}
    for name, value in merged.items():
        if name in accepted:
            _check_value(env_id, name, value)
    stream, dataset = merged.get("stream", "split"), merged.get("dataset", "mnist5k")
    if merged.get("tasks") is None:
        check_stream(stream, dataset, merged.get("n_tasks"))
    specs = stream_specs(stream, dataset, merged.get("tasks"), merged.get("n_tasks"))
    scenario = merged.get("scenario", "task")
    try:
        check_scenario(scenario)
        if scenario == "domain":
            require_one_labelling(specs)
    except ValueError as error:
        raise ValueError(f"{env_id}: {error}") from None
    return merged


def make(env_id: str | EnvSpec, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make`` after :func:`check_env_kwargs`: a mistyped id or argument, or an
    impossible stream, fails at once with a clear :class:`ValueError`."""
    if not isinstance(env_id, EnvSpec):
        check_env_kwargs(env_id, kwargs)
    return gymnasium.make(env_id, **kwargs)


def env_scenario(env_id: str, env_kwargs: dict | None = None) -> str:
    """The scenario a ``make(env_id, **env_kwargs)`` would run, without building the env
    (so an agent that does not support it is refused before any data is loaded)."""
    return {**gymnasium.spec(env_id).kwargs, **(env_kwargs or {})}.get("scenario", "task")
