"""Binary task specs, stream builders and their materialisation into data."""

from clbench.tasks.materialize import (
    DEFAULT_VALIDATION_FRACTION,
    EVALUATIONS,
    SCENARIOS,
    balanced_indices,
    materialize,
    stratified_holdout,
)
from clbench.tasks.spec import Task, TaskSpec, require_one_labelling
from clbench.tasks.streams import STREAMS, check_stream, mixed, one_vs_rest, split, tuples

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "EVALUATIONS",
    "SCENARIOS",
    "STREAMS",
    "Task",
    "TaskSpec",
    "balanced_indices",
    "check_stream",
    "materialize",
    "mixed",
    "one_vs_rest",
    "require_one_labelling",
    "split",
    "stratified_holdout",
    "tuples",
]
