"""The agent plug-in contract: four methods, nothing else.

An agent is a class built as ``AgentClass(device=..., **kwargs)`` with

- ``learn(task)``: learn the new task from ``task.x_train`` / ``task.y_train`` (uint8 inputs,
  int64 {0,1} labels; ``task.normalize(x)`` standardises a batch). No test data is given.
  ``task.scenario`` says which scenario the stream runs in, so the agent knows it while it
  learns: ``"task"`` (task-incremental, the default) or ``"domain"`` (domain-incremental,
  van de Ven & Tolias 2019: one labelling holds across tasks, label 1 = each task's first
  class set, and queries come without their task; a single-head method then trains one
  shared head for all tasks). Task boundaries and ``task.id`` are known in both.
- ``predict(x, task_id) -> labels``: int64 (or bool) labels in {0, 1}, shape ``(len(x),)``,
  for uint8 inputs ``x``. Task-incremental: ``task_id`` is the queries' task (one task per
  call). Domain-incremental: ``task_id`` is None and a call may mix every task seen so far.
  With future queries (env ``query_future=True``, for forward transfer) the task may not be
  learned yet, or nothing may be: answer a best guess, do not raise
  (:func:`clbench.training.seeded_for_unseen_task` makes a fresh head or net deterministic).
- ``state_dict()`` / ``load_state_dict(state)``: everything the agent keeps between tasks,
  as tensors plus plain metadata (int, float, str, bool, None, lists, dicts). The harness
  serialises the state after every task and counts its bytes; every call runs in a *fresh*
  worker process whose agent loaded it: whatever is not in the state is lost.
- optional ``metrics() -> dict``: agent-specific figures about the last task.
- optional class attribute ``scenarios``: the scenarios the agent supports (default
  ``("task",)``). The harness refuses an env whose scenario is not among them before any
  work (:func:`require_scenario`).

Agents are found by name in the ``clbench.agents`` entry-point group, as ``module:Class``,
or as ``path/to/file.py:Class``. :func:`canonical_agent_name` gives one name per agent
whichever way it was named, and :func:`non_default_arguments` the constructor arguments that
set it apart from its defaults: together they say which rows of a table are the same agent.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clbench.tasks import SCENARIOS, Task

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "clbench.agents"
DEFAULT_SCENARIOS = ("task",)
USER_MODULE_PREFIX = "clbench_user_agent_"


@runtime_checkable
class Agent(Protocol):
    """What the harness calls. ``metrics()`` is optional and not part of this check."""

    def learn(self, task: Task) -> None: ...

    def predict(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def registered_agents() -> dict[str, str]:
    """Agent names in the ``clbench.agents`` entry-point group -> ``module:Class``."""
    return dict(_entry_points())


@functools.cache
def _entry_points() -> tuple[tuple[str, str], ...]:
    """The group's entries, read once per process: scanning every installed distribution's
    metadata takes about 10 ms, and a leaderboard build asks once per result file."""
    return tuple((ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP))


def _import_module_or_file(module_name: str):
    """Import ``package.module``, or a Python file given by its path (``path/agent.py``)."""
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name).resolve()
    if str(path.parent) not in sys.path:  # the file may import its sibling modules
        sys.path.insert(0, str(path.parent))
    alias = f"{USER_MODULE_PREFIX}{abs(hash(str(path)))}"
    if alias in sys.modules:
        return sys.modules[alias]
    spec = importlib.util.spec_from_file_location(alias, path)
    if spec is None or not path.exists():
        raise ImportError(f"no Python file at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def load_agent_class(name: str) -> type:
    """Resolve a registered agent name or a ``module:Class`` path to the agent's class."""
    known = {} if ":" in name else registered_agents()
    target = known.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown agent {name!r}; registered agents: {', '.join(sorted(known)) or 'none'}; "
            "or give a 'module:Class' or 'file.py:Class' path"
        )
    module_name, _, class_name = target.rpartition(":")
    try:
        module = _import_module_or_file(module_name)
    except (ImportError, OSError) as error:
        raise ValueError(f"agent {name!r}: cannot import {module_name!r}: {error}") from None
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"agent {name!r}: module {module_name!r} has no {class_name!r}") from None
    missing = [m for m in ("learn", "predict", "state_dict", "load_state_dict")
               if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(f"agent {name!r} ({target}) lacks the method(s) {', '.join(missing)} "
                        "of the agent contract (see clbench.agent)")
    return cls


def supported_scenarios(cls: type) -> tuple[str, ...]:
    """The scenarios agent class ``cls`` declares (``scenarios``; default task-incremental)."""
    declared = getattr(cls, "scenarios", DEFAULT_SCENARIOS)
    if isinstance(declared, str) or not all(s in SCENARIOS for s in declared):
        raise TypeError(f"agent class {cls.__qualname__} declares scenarios={declared!r}; "
                        f"give a tuple of some of {', '.join(map(repr, SCENARIOS))}")
    return tuple(declared)


class ScenarioRefused(ValueError):
    """The environment's scenario is not among those the agent declares."""


def require_scenario(supported: Sequence[str], name: str, scenario: str) -> None:
    """Refuse to run agent ``name``, which declares ``supported`` (see
    :func:`supported_scenarios`), in another scenario: :class:`ScenarioRefused`."""
    if scenario not in supported:
        raise ScenarioRefused(
            f"agent {name!r} supports the scenario(s) {', '.join(map(repr, supported))}, not "
            f"scenario={scenario!r} asked for by the environment; choose a task-incremental "
            "env (without 'Domain' in its id) or an agent that declares "
            f"scenarios = (..., {scenario!r}, ...)")


def agent_reference(agent: str | type) -> str:
    """The canonical name of an agent: a registered name, ``module:Class`` or
    ``/abs/path/file.py:Class``. Nothing is imported: the agent's module is imported in
    the workers only."""
    if isinstance(agent, str):
        if ":" not in agent:
            known = registered_agents()
            if agent not in known:
                raise ValueError(
                    f"unknown agent {agent!r}; registered agents: "
                    f"{', '.join(sorted(known)) or 'none'}; or give a 'module:Class' or "
                    "'file.py:Class' path")
            return agent
        module, _, qualname = agent.rpartition(":")
        if module.endswith(".py"):
            path = Path(module).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"agent {agent!r}: no Python file at {path}")
            return f"{path}:{qualname}"
        return agent
    if isinstance(agent, type):
        if "<locals>" in agent.__qualname__:
            raise ValueError(
                f"agent class {agent.__qualname__} is defined inside a function; define it at "
                "module level so that a worker process can import it")
        module = agent.__module__
        if module == "__main__":
            module = getattr(sys.modules["__main__"], "__file__", None)
            if module is None:
                raise ValueError(
                    f"agent class {agent.__qualname__} lives in an interactive session; put it "
                    "in a module or file so that a worker process can import it")
            module = str(Path(module).resolve())
        return f"{module}:{agent.__qualname__}"
    raise TypeError(
        f"agent must be a registered name, a 'module:Class' path or a class, not "
        f"{type(agent).__name__}: the harness builds fresh agents from constructor arguments")


def worker_target(name: str) -> str:
    """``module:Class`` for a worker, from a name :func:`agent_reference` gave (registered
    names resolved here, once)."""
    return name if ":" in name else registered_agents()[name]


def canonical_agent_name(agent: str | type) -> str:
    """The one name of an agent, whichever way it was given.

    A class registered in the ``clbench.agents`` group is called by its registered name
    (``"baselines.naive:Naive"`` and the class ``Naive`` both give ``"naive"``). Any other
    agent is ``module:Class``, where a file is named by its module name, not its path: the CLI's
    ``path/to/l2agent.py:L2Prev``, ``l2agent:L2Prev`` and the class ``L2Prev`` defined in
    ``l2agent.py`` (imported, or run as ``__main__``) all give ``"l2agent:L2Prev"``.
    """
    known = registered_agents()
    if isinstance(agent, str):
        if agent in known:
            return agent
        module, sep, class_name = agent.rpartition(":")
        if not sep:
            raise ValueError(f"unknown agent {agent!r}; registered agents: "
                             f"{', '.join(sorted(known)) or 'none'}; or give 'module:Class'")
    elif isinstance(agent, type):
        module, class_name = agent.__module__, agent.__qualname__
        if module == "__main__" or module.startswith(USER_MODULE_PREFIX):
            try:
                module = inspect.getfile(agent)
            except (TypeError, OSError):
                pass  # an interactive session: no file to name it by
    else:
        raise TypeError(f"an agent is named by a string or a class, not {type(agent).__name__}")
    if module.endswith(".py"):
        module = Path(module).stem
    path = f"{module}:{class_name}"
    by_target = {target: name for name, target in sorted(known.items())}
    return by_target.get(path, path)


def agent_arguments(cls: type) -> dict[str, Any]:
    """The constructor arguments of an agent class and their defaults (``device`` aside).

    An ``__init__`` that passes ``**kwargs`` on to its base class (as ``Joint`` does to
    ``Naive``) also has the base class's arguments; one that takes ``**recipe`` has the
    fields of the shared training recipe (:data:`clbench.recipe.DEFAULT`). Arguments without
    a default are left out.
    """
    from clbench.recipe import DEFAULT

    arguments: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        forwards = False
        for parameter in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD and parameter.name == "recipe":
                for key, value in dataclasses.asdict(DEFAULT).items():
                    arguments.setdefault(key, _plain(value))
            elif parameter.kind is parameter.VAR_KEYWORD:
                forwards = True
            elif (parameter.name not in ("self", "device") and parameter.default
                  is not parameter.empty and parameter.kind is not parameter.VAR_POSITIONAL):
                arguments.setdefault(parameter.name, _plain(parameter.default))
        if not forwards:
            break
    return arguments


def non_default_arguments(kwargs: dict[str, Any], defaults: dict[str, Any] | None) -> dict:
    """The entries of ``kwargs`` that differ from ``defaults`` (all of them when the defaults
    are unknown, e.g. for an agent that is not installed where the table is built)."""
    if defaults is None:
        return dict(sorted(kwargs.items()))
    return {key: value for key, value in sorted(kwargs.items())
            if key not in defaults or _plain(value) != defaults[key]}


def _plain(value: Any) -> Any:
    """``value`` as its JSON round trip (tuples become lists), or its repr where not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)
