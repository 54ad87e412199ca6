"""The flat table of clbench's registered environments (``clbench/`` namespace, v0).

Every stream parameter can be overridden as a ``make()`` kwarg and is recorded in the spec.
The ``*5k`` ids run offline on the built-in ``mnist5k`` data; the others need the full
datasets under the data root (or a network that reaches torchvision's mirrors). The
``Domain*`` ids are the split streams in the domain-incremental scenario (``scenario="domain"``:
the agent is not told a query's task); every other id is task-incremental. Validation runs
are the same ids with ``evaluation="validation"``.
"""

from gymnasium.envs.registration import register, spec

from clbench.tasks import one_vs_rest

ENTRY_POINT = "clbench.env.task_stream:TaskStreamEnv"
PAPER_POSITIVE_FRACTION = 0.4


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


def env_scenario(env_id: str, env_kwargs: dict | None = None) -> str:
    """The scenario a ``make(env_id, **env_kwargs)`` would run, without building the env
    (so an agent that does not support it is refused before any data is loaded)."""
    return {**spec(env_id).kwargs, **(env_kwargs or {})}.get("scenario", "task")
