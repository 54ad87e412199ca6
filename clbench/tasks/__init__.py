"""Binary task specs, stream builders and their materialisation into data."""

from clbench.tasks.materialize import balanced_indices, materialize
from clbench.tasks.spec import Task, TaskSpec
from clbench.tasks.streams import STREAMS, check_stream, mixed, one_vs_rest, split, tuples

__all__ = [
    "STREAMS",
    "Task",
    "TaskSpec",
    "balanced_indices",
    "check_stream",
    "materialize",
    "mixed",
    "one_vs_rest",
    "split",
    "tuples",
]
