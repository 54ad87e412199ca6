"""Binary task specs, stream builders and their materialisation into data."""

from clbench.tasks.materialize import balanced_indices, materialize
from clbench.tasks.spec import Task, TaskSpec
from clbench.tasks.streams import STREAMS, mixed, one_vs_rest, split, tuples

__all__ = [
    "STREAMS",
    "Task",
    "TaskSpec",
    "balanced_indices",
    "materialize",
    "mixed",
    "one_vs_rest",
    "split",
    "tuples",
]
