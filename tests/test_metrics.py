"""Metrics of the accuracy matrix, against hand-computed values and as properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clbench import metrics

# Ragged R of three tasks: row i holds tasks 0..i.
R = [
    [0.90],
    [0.80, 0.95],
    [0.70, 0.85, 0.99],
]


def test_hand_computed_ragged_matrix():
    assert metrics.final_accuracy(R) == pytest.approx((0.70 + 0.85 + 0.99) / 3)
    # BWT = ((0.70 - 0.90) + (0.85 - 0.95)) / 2 = -0.15
    assert metrics.backward_transfer(R) == pytest.approx(-0.15)
    # forgetting: task 0 best 0.90 -> 0.70 (0.20); task 1 best 0.95 -> 0.85 (0.10)
    assert metrics.forgetting(R) == pytest.approx(0.15)
    assert metrics.learning_accuracy(R) == pytest.approx((0.90 + 0.95 + 0.99) / 3)
    assert metrics.forward_transfer(R, None) is None
    assert metrics.tasks_retained(R, 0.95) == 1
    assert metrics.tasks_retained(R, 0.80) == 2


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    # Task 0 improves after task 1 (0.6 -> 0.9) then drops to 0.5: forgetting 0.4, BWT -0.1.
    matrix = [[0.6], [0.9, 0.8], [0.5, 0.8, 0.7]]
    assert metrics.forgetting(matrix) == pytest.approx((0.4 + 0.0) / 2)
    assert metrics.backward_transfer(matrix) == pytest.approx(((0.5 - 0.6) + 0.0) / 2)


def test_forward_transfer_against_the_untrained_agent():
    square = [
        [0.9, 0.6, 0.5],
        [0.8, 0.9, 0.7],
        [0.7, 0.9, 0.9],
    ]
    # b = the freshly built agent's accuracies; task 0's (0.4) is not used.
    # FWT = mean(R[0][1] - b_1, R[1][2] - b_2) = mean(0.6 - 0.6, 0.7 - 0.55) = 0.075
    baseline = [0.4, 0.6, 0.55]
    assert metrics.forward_transfer(square, baseline) == pytest.approx(0.075)
    assert metrics.summarize(square, fwt_baseline=baseline)["fwt"] == pytest.approx(0.075)
    # a constant predictor on 40/60 tasks scores 0.6 before and after: no transfer, not +0.1
    constant = [[0.6, 0.6], [0.6, 0.6]]
    assert metrics.forward_transfer(constant, [0.6, 0.6]) == pytest.approx(0.0)
    assert metrics.final_accuracy(square) == pytest.approx((0.7 + 0.9 + 0.9) / 3)


def test_forward_transfer_never_assumes_chance():
    square = [[0.9, 0.6], [0.8, 0.9]]
    for baseline in (None, [0.5], [0.5, None]):
        with pytest.raises(ValueError, match="untrained agent's accuracy on tasks 1..1"):
            metrics.forward_transfer(square, baseline)
    assert metrics.forward_transfer(R, None) is None  # ragged: future tasks were not asked


def test_single_task_has_no_transfer():
    assert metrics.backward_transfer([[0.8]]) is None
    assert metrics.forgetting([[0.8]]) is None
    summary = metrics.summarize([[0.8]])
    assert summary["acc"] == 0.8 and summary["retained"] == 0


def test_missing_entries_are_named():
    with pytest.raises(ValueError, match=r"R\[1\]\[1\]"):
        metrics.final_accuracy([[0.5], [0.5]])


def test_compression():
    assert metrics.compression([50, 100], [100, 400]) == [2.0, 4.0]


accuracies = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def ragged_matrices(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    return [[draw(accuracies) for _ in range(i + 1)] for i in range(n)]


@given(ragged_matrices())
def test_properties(matrix):
    summary = metrics.summarize(matrix)
    assert 0.0 <= summary["acc"] <= 1.0
    assert 0 <= summary["retained"] <= len(matrix)
    if len(matrix) > 1:
        # Forgetting is never below -BWT: the best accuracy is at least the first one.
        assert summary["forgetting"] >= -summary["bwt"] - 1e-12
        assert -1.0 <= summary["bwt"] <= 1.0


@given(ragged_matrices())
def test_unchanged_old_tasks_mean_zero_transfer(matrix):
    # Freeze every task at its just-learned accuracy: BWT and forgetting are exactly 0.
    frozen = [[matrix[j][j] for j in range(i + 1)] for i in range(len(matrix))]
    if len(frozen) > 1:
        assert metrics.backward_transfer(frozen) == pytest.approx(0.0, abs=1e-12)
        assert metrics.forgetting(frozen) == pytest.approx(0.0, abs=1e-12)
    assert metrics.final_accuracy(frozen) == pytest.approx(metrics.learning_accuracy(frozen))


# A full matrix whose task 0 peaks in row 1 (0.99), and the same matrix as eval_every=3 keeps
# it: rows 0 and 1 hold the task just learned only, row 2 (the 3rd) and the last are full.
FULL = [
    [0.90],
    [0.99, 0.95],
    [0.85, 0.90, 0.99],
    [0.60, 0.80, 0.90, 0.97],
]
SPARSE = [
    [0.90],
    [None, 0.95],
    [0.85, 0.90, 0.99],
    [0.60, 0.80, 0.90, 0.97],
]


def test_a_sparse_matrix_keeps_every_figure_but_forgetting_exact():
    for name in ("final_accuracy", "backward_transfer", "learning_accuracy", "tasks_retained"):
        figure = getattr(metrics, name)
        assert figure(SPARSE) == figure(FULL), name
    # best over the evaluated rows: task 0 max(0.90, 0.85) - 0.60 (the full matrix: 0.99 -
    # 0.60), task 1 max(0.95, 0.90) - 0.80, task 2 0.99 - 0.90
    assert metrics.forgetting(SPARSE) == pytest.approx((0.30 + 0.15 + 0.09) / 3)
    assert metrics.forgetting(FULL) == pytest.approx((0.39 + 0.15 + 0.09) / 3)
    assert [metrics.full_row(i, 4, 3) for i in range(4)] == [False, False, True, True]
    assert all(metrics.full_row(i, 4, 1) for i in range(4))


def test_sparse_rows_hold_fwt_when_they_hold_the_next_task():
    square = [[0.9, 0.6, None], [None, 0.9, 0.7], [0.7, 0.9, 0.9]]  # eval_every=3, future
    assert metrics.forward_transfer(square, [0.4, 0.6, 0.55]) == pytest.approx(0.075)
    assert metrics.forward_transfer([[0.9, None], [0.8, 0.9]], [0.5, 0.5]) is None


def test_between_full_rows_the_final_row_figures_wait():
    summary = metrics.summarize(SPARSE[:2])
    assert [summary[k] for k in ("acc", "bwt", "forgetting", "retained")] == [None] * 4
    assert summary["learning_accuracy"] == pytest.approx((0.90 + 0.95) / 2)
    assert metrics.summarize(SPARSE)["acc"] == metrics.final_accuracy(FULL)
    with pytest.raises(ValueError, match=r"R\[1\]\[1\]"):  # the diagonal is never skipped
        metrics.forgetting([[0.9], [0.8, None], [0.7, 0.8, 0.9]])


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_a_bad_eval_every_names_the_value_and_the_remedy(value):
    with pytest.raises(ValueError, match=rf"eval_every={value!r}: give a whole number"):
        metrics.check_eval_every(value)
    assert metrics.check_eval_every(3) == 3
