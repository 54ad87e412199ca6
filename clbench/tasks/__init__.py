"""Binary task specs, stream builders and their materialisation into data.

Specs and streams are imported at once (they import no torch); what materialises data is
imported on first use, so that ``import clbench`` stays light.
"""

from importlib import import_module

from clbench.tasks.spec import (
    EVALUATIONS,
    SCENARIOS,
    Task,
    TaskSpec,
    check_scenario,
    require_one_labelling,
)
from clbench.tasks.streams import (
    STREAMS,
    check_stream,
    mixed,
    one_vs_rest,
    split,
    stream_specs,
    tuples,
)

_MATERIALIZE = ("DEFAULT_VALIDATION_FRACTION", "balanced_indices", "materialize",
                "stratified_holdout")


def __getattr__(name: str):
    if name in _MATERIALIZE:
        return getattr(import_module("clbench.tasks.materialization"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "EVALUATIONS",
    "SCENARIOS",
    "STREAMS",
    "Task",
    "TaskSpec",
    "balanced_indices",
    "check_scenario",
    "check_stream",
    "materialize",
    "mixed",
    "one_vs_rest",
    "require_one_labelling",
    "split",
    "stratified_holdout",
    "stream_specs",
    "tuples",
]
