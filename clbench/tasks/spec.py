"""Binary task specs and materialised tasks.

Imports no torch (a :class:`Task` holds tensors but its methods import what they use), so
that registering the environments, which names tasks by their specs, stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clbench.data import dataset_info

if TYPE_CHECKING:
    import torch

EVALUATIONS = ("test", "validation")
SCENARIOS = ("task", "domain")


@dataclass(frozen=True)
class TaskSpec:
    """A binary split of one dataset's classes: label 1 for ``positive``, 0 for ``negative``.

    Specs whose positive or negative sets differ are different tasks. ``name`` is stable and
    readable, e.g. ``mnist:1|2,3``.
    """

    dataset: str
    positive: tuple[int, ...]
    negative: tuple[int, ...]

    def __post_init__(self) -> None:
        info = dataset_info(self.dataset)
        positive, negative = tuple(sorted(self.positive)), tuple(sorted(self.negative))
        object.__setattr__(self, "positive", positive)
        object.__setattr__(self, "negative", negative)
        if not positive or not negative:
            raise ValueError(f"task {self.name}: positive and negative classes must be non-empty")
        if set(positive) & set(negative):
            raise ValueError(
                f"task {self.name}: classes {sorted(set(positive) & set(negative))} are both "
                "positive and negative; the two sets must be disjoint"
            )
        outside = [c for c in positive + negative if not 0 <= c < info.n_classes]
        if outside or len(set(positive)) != len(positive) or len(set(negative)) != len(negative):
            raise ValueError(
                f"task {self.name}: classes must be distinct integers in [0, {info.n_classes}) "
                f"for {self.dataset}; got {outside or 'repeated classes'}"
            )

    @property
    def name(self) -> str:
        pos = ",".join(map(str, self.positive))
        neg = ",".join(map(str, self.negative))
        return f"{self.dataset}:{pos}|{neg}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return dataset_info(self.dataset).input_shape

    @classmethod
    def from_name(cls, name: str) -> TaskSpec:
        """Parse ``dataset:pos|neg`` (the inverse of :attr:`name`)."""
        try:
            dataset, classes = name.split(":")
            positive, negative = classes.split("|")
            return cls(
                dataset,
                tuple(int(c) for c in positive.split(",")),
                tuple(int(c) for c in negative.split(",")),
            )
        except ValueError as error:
            raise ValueError(
                f"bad task name {name!r}: expected 'dataset:pos|neg' like 'mnist:1|2,3' ({error})"
            ) from None


@dataclass(frozen=True, eq=False)
class Task:
    """One task of a stream: its position, spec and data (uint8 inputs, int64 {0,1} labels).

    The environment holds the evaluation data: the test split, or with
    ``evaluation="validation"`` the validation part held out of the training data (then
    ``x_train`` is only the rest and the test split is never loaded). An agent receives
    :meth:`for_agent`, which keeps only the training data and the ``scenario``:
    ``"task"`` (task-incremental: ``predict`` is told each query's task) or ``"domain"``
    (domain-incremental: it is not, and single-head agents train one shared head).
    """

    id: int
    spec: TaskSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = field(default=None, repr=False)
    y_test: torch.Tensor | None = field(default=None, repr=False)
    x_val: torch.Tensor | None = field(default=None, repr=False)
    y_val: torch.Tensor | None = field(default=None, repr=False)
    scenario: str = "task"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def __eq__(self, other: object) -> bool:
        """Tasks are equal when their id, spec and every data tensor are equal."""
        if not isinstance(other, Task):
            return NotImplemented
        import torch

        tensors = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")
        facts = (self.id, self.spec, self.scenario)
        return facts == (other.id, other.spec, other.scenario) and all(
            (a is None and b is None)
            or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
            for a, b in ((getattr(self, t), getattr(other, t)) for t in tensors)
        )

    __hash__ = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 inputs of this task -> standardised float32 (per batch, on the fly)."""
        from clbench.data import normalize

        return normalize(images, self.spec.dataset)

    def for_agent(self) -> Task:
        """The same task without its evaluation data (test or validation)."""
        return Task(self.id, self.spec, self.x_train, self.y_train, scenario=self.scenario)


def check_scenario(scenario: object) -> None:
    """Refuse a ``scenario`` that is not one of :data:`SCENARIOS`, naming them."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario={scenario!r}: choose one of {', '.join(SCENARIOS)}")


def require_one_labelling(specs: list[TaskSpec] | None) -> None:
    """Refuse a stream for the domain-incremental scenario unless one labelling holds across it
    (``specs`` None: a ``tuples`` stream, whose tasks are drawn at random).

    In that scenario a query's task is not told, so an input's label must not depend on its
    task: every task comes from one dataset (one input domain), and no class is positive in
    one task and negative in another (label 1 = each task's first class set, as in split
    streams: 0|1, 2|3, ... where "the first class of the pair" is 1).
    """
    remedy = ("use a split stream (e.g. clbench/DomainSplitMNIST5k-v0) or scenario='task'")
    if specs is None:
        raise ValueError(
            "scenario='domain' needs one labelling across the stream, but a 'tuples' stream "
            "draws each task's classes at random, so a class is positive in one task and "
            f"negative in another; {remedy}")
    datasets = sorted({spec.dataset for spec in specs})
    if len(datasets) > 1:
        raise ValueError(
            f"scenario='domain' needs every task from one dataset (one input domain, one shared "
            f"head), but this stream mixes {', '.join(datasets)}; {remedy}")
    label_of: dict[int, tuple[int, TaskSpec]] = {}
    for task_id, spec in enumerate(specs):
        for label, classes in ((1, spec.positive), (0, spec.negative)):
            for c in classes:
                first_id, first = label_of.setdefault(c, (task_id, spec))
                if first.positive.count(c) != label:
                    raise ValueError(
                        f"scenario='domain' needs one labelling across the stream, but class "
                        f"{c} is {'positive' if label else 'negative'} in task {task_id} "
                        f"({spec.name}) and {'negative' if label else 'positive'} in task "
                        f"{first_id} ({first.name}): without the task id the same input would "
                        f"need two labels (one_vs_rest streams do this); {remedy}")
