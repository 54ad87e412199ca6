"""The Gymnasium task-stream environment and its registered ids."""

from clbench.env import registration  # noqa: F401  (registers the ids)
from clbench.env.task_stream import TaskStreamEnv, crop, pad_to

__all__ = ["TaskStreamEnv", "crop", "pad_to"]
