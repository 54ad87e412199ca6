"""The Gymnasium task-stream environment and its registered ids."""

from clbench.env.registration import env_scenario  # importing it registers the ids
from clbench.env.task_stream import UNTOLD_TASK, TaskStreamEnv, crop, pad_to

__all__ = ["UNTOLD_TASK", "TaskStreamEnv", "crop", "pad_to", "env_scenario"]
