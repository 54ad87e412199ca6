"""Continual-learning metrics: pure functions of the accuracy matrix R.

``R[i][j]`` is the accuracy on task j after learning task i; rows may be ragged (row i holds
tasks 0..i) or square (when future tasks were queried). ``None`` marks an entry never asked.
T is the number of tasks learned (rows).

- ACC = mean_j R[T-1][j] (final average accuracy)
- BWT = mean_{j<T-1} (R[T-1][j] - R[j][j]) (backward transfer, Lopez-Paz & Ranzato 2017)
- forgetting = mean_{j<T-1} (max_{j<=l<T-1} R[l][j] - R[T-1][j]) (Chaudhry et al. 2018),
  the max over the rows that evaluated task j
- learning accuracy = mean_j R[j][j]
- FWT = mean_{j>=1} (R[j-1][j] - b_j) (forward transfer, Lopez-Paz & Ranzato 2017), needs
  future queries; b_j is the accuracy on task j of the freshly built agent before it learned
  anything (measured, not assumed: a constant predictor scores 0.6 on a 40/60 task)
- retained(p) = number of tasks with R[T-1][j] >= p (the paper's threshold, p = 0.95)

Each function raises :class:`ValueError` (and nothing else) when R lacks an entry it needs
or the lengths of its arguments disagree; with no tasks the means are None.

**Sparse matrices** (``eval_every`` N > 1, :func:`full_row`): row i holds every task asked
only when (i + 1) % N == 0 or i is the last task; the other rows hold the task just learned
(and, with future queries, the next one) and None elsewhere. ACC, BWT, learning accuracy,
retained and FWT use the final row, the diagonal and R[j-1][j] only, so they equal the full
matrix's; forgetting takes each task's best accuracy over the rows that evaluated it, a
lower bound of the full matrix's (a peak between two full rows is not seen).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _entry(matrix: Matrix, i: int, j: int) -> float:
    row = matrix[i]
    if j >= len(row) or row[j] is None:
        raise ValueError(f"accuracy matrix has no entry R[{i}][{j}]")
    try:
        return float(row[j])
    except (TypeError, ValueError):
        raise ValueError(f"accuracy matrix entry R[{i}][{j}] = {row[j]!r} is not a number") \
            from None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def final_accuracy(matrix: Matrix) -> float:
    """ACC: mean accuracy over all T tasks after the last one was learned."""
    last = len(matrix) - 1
    return _mean([_entry(matrix, last, j) for j in range(len(matrix))])


def backward_transfer(matrix: Matrix) -> float | None:
    """BWT: how learning later tasks changed earlier ones (negative = forgetting)."""
    last = len(matrix) - 1
    return _mean([_entry(matrix, last, j) - _entry(matrix, j, j) for j in range(last)])


def forgetting(matrix: Matrix) -> float | None:
    """Average drop from each earlier task's best accuracy to its final accuracy.

    The best is taken over the rows that evaluated the task: R[j][j] (required) and every
    later row holding R[i][j]; rows a sparse schedule skipped (None) are not seen, so on a
    sparse matrix this is a lower bound of the full matrix's forgetting.
    """
    last = len(matrix) - 1
    return _mean([
        max([_entry(matrix, j, j), *(_entry(matrix, i, j) for i in range(j + 1, last)
                                     if _asked(matrix, i, j))]) - _entry(matrix, last, j)
        for j in range(last)
    ])


def _asked(matrix: Matrix, i: int, j: int) -> bool:
    return j < len(matrix[i]) and matrix[i][j] is not None


def learning_accuracy(matrix: Matrix) -> float:
    """Mean accuracy on each task right after learning it (plasticity)."""
    return _mean([_entry(matrix, j, j) for j in range(len(matrix))])


def forward_transfer(matrix: Matrix, baseline: Sequence[float | None] | None) -> float | None:
    """FWT: accuracy on task j just before learning it, above ``baseline[j]``, the accuracy
    of the freshly built agent on task j (Lopez-Paz & Ranzato 2017).

    Returns None unless future tasks were queried (R[j-1][j] exists for every j >= 1; with
    ``eval_every`` > 1 the harness evaluates R[j-1][j] in every row, so FWT stays exact). There
    is no default baseline: chance is not 0.5 on an unbalanced task (a constant answer scores
    0.6 on a 40/60 task), and an agent's untrained guess need not be chance; a matrix with
    future entries and no baseline is an error.
    """
    n = len(matrix)
    if n < 2 or not all(_asked(matrix, j - 1, j) for j in range(1, n)):
        return None
    if baseline is None or len(baseline) < n or any(baseline[j] is None for j in range(1, n)):
        raise ValueError(f"FWT needs the untrained agent's accuracy on tasks 1..{n - 1} "
                         f"(the baseline row measured with query_future); got {baseline}")
    return _mean([_entry(matrix, j - 1, j) - float(baseline[j]) for j in range(1, n)])


def tasks_retained(matrix: Matrix, threshold: float = 0.95) -> int:
    """How many tasks still score at least ``threshold`` after the last task."""
    last = len(matrix) - 1
    return sum(_entry(matrix, last, j) >= threshold for j in range(len(matrix)))


def compression(storage_bytes: Sequence[int], reference_bytes: Sequence[int]) -> list[float]:
    """Per task: bytes of one fp32 reference net per task so far / bytes the agent kept."""
    return [ref / kept if kept else float("inf")
            for kept, ref in zip(storage_bytes, reference_bytes, strict=True)]


def summarize(matrix: Matrix, threshold: float = 0.95,
              fwt_baseline: Sequence[float | None] | None = None
              ) -> dict[str, float | int | None]:
    """Every scalar metric of R in one dict (the ``metrics`` field of a result file);
    ``fwt_baseline`` is the untrained agent's accuracy per task (see :func:`forward_transfer`).

    When the last row lacks entries (a sparse run reported between two full rows), the
    figures of the final row (ACC, BWT, forgetting, retained) are None until the next one.
    """
    final = not matrix or all(_asked(matrix, len(matrix) - 1, j) for j in range(len(matrix)))
    return {
        "acc": final_accuracy(matrix) if final else None,
        "bwt": backward_transfer(matrix) if final else None,
        "forgetting": forgetting(matrix) if final else None,
        "learning_accuracy": learning_accuracy(matrix),
        "fwt": forward_transfer(matrix, fwt_baseline),
        "retained": tasks_retained(matrix, threshold) if final else None,
        "retained_threshold": threshold,
    }


# ----------------------------------------------------------------------------- schedule
def check_eval_every(value: object) -> int:
    """``eval_every`` as an int, or :class:`ValueError` naming the value and the remedy."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"eval_every={value!r}: give a whole number of tasks >= 1: the accuracy of every "
            "task seen is evaluated after every eval_every-th task and the last (1, the "
            "default, after every task: the full accuracy matrix)")
    return int(value)


def full_row(task_id: int, n_tasks: int, eval_every: int) -> bool:
    """Whether row ``task_id`` of R evaluates every task asked under ``eval_every``: every
    eval_every-th row and the last one (the others hold the task just learned, and with
    future queries the next one)."""
    return (task_id + 1) % eval_every == 0 or task_id == n_tasks - 1


def schedule_label(eval_every: int) -> str:
    """How tables mark a sparse schedule: ``"R every N"``, empty for 1 (the full matrix)."""
    return "" if eval_every == 1 else f"R every {eval_every}"


def schedule_note(eval_every: int) -> str | None:
    """What a result with ``eval_every`` says about its matrix and metrics (None for 1)."""
    if eval_every == 1:
        return None
    return (f"{schedule_label(eval_every)}: every task seen was evaluated after each task t with "
            f"(t + 1) % {eval_every} == 0 ({eval_every - 1}, {2 * eval_every - 1}, ...) and "
            "after the last; after the others only the task just learned (and, with query_future, "
            "the next one: FWT's R[t][t+1]), the other entries are null. ACC, BWT, learning "
            "accuracy, retained and FWT are exact; forgetting takes each task's best accuracy "
            "over the evaluated rows only, a lower bound of the full matrix's.")
