"""clbench: a Gymnasium task-stream benchmark for continual learning.

``import clbench`` registers the ``clbench/...`` environments with Gymnasium.
"""


from clbench import env as _env  # noqa: F401  (registers the environments)
from clbench.env.registration import make

__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    """Run an agent through a task stream; see :func:`clbench.harness.evaluate`."""
    from clbench.harness import evaluate as run

    return run(*args, **kwargs)


__all__ = ["__version__", "evaluate", "make"]
