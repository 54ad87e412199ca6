"""The Gymnasium task-stream environment and its registered ids.

Importing this package registers the ids (:mod:`clbench.env.registration`, no torch); the
environment class and its helpers are imported on first use."""

from importlib import import_module

from clbench.env.registration import env_scenario  # importing it registers the ids

_TASK_STREAM = ("UNTOLD_TASK", "TaskStreamEnv", "crop", "pad_to")


def __getattr__(name: str):
    if name in _TASK_STREAM:
        return getattr(import_module("clbench.env.task_stream"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["UNTOLD_TASK", "TaskStreamEnv", "crop", "pad_to", "env_scenario"]
