"""Binary task specs and materialised tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clbench.data import dataset_info, normalize


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

    The environment holds the test split; an agent receives :meth:`for_agent`, which keeps
    only the training data.
    """

    id: int
    spec: TaskSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = field(default=None, repr=False)
    y_test: torch.Tensor | None = field(default=None, repr=False)

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
        tensors = ("x_train", "y_train", "x_test", "y_test")
        return (self.id, self.spec) == (other.id, other.spec) and all(
            (a is None and b is None)
            or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
            for a, b in ((getattr(self, t), getattr(other, t)) for t in tensors)
        )

    __hash__ = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 inputs of this task -> standardised float32 (per batch, on the fly)."""
        return normalize(images, self.spec.dataset)

    def for_agent(self) -> Task:
        """The same task without its test split."""
        return Task(self.id, self.spec, self.x_train, self.y_train)
