"""clbench.tasks: task specs, stream builders, class balance and materialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.data import load_dataset
from clbench.tasks import (
    STREAMS,
    Task,
    TaskSpec,
    balanced_indices,
    materialize,
    mixed,
    one_vs_rest,
    split,
    tuples,
)

# ---------------------------------------------------------------- TaskSpec


def test_name_is_sorted_readable_and_round_trips():
    spec = TaskSpec("mnist", (3, 1), (2,))
    assert spec.positive == (1, 3) and spec.negative == (2,)
    assert spec.name == "mnist:1,3|2"
    assert TaskSpec.from_name(spec.name) == spec
    assert TaskSpec.from_name("cifar100:99|0,42").name == "cifar100:99|0,42"
    assert spec.input_shape == (1, 28, 28)
    assert TaskSpec("cifar10", (0,), (1,)).input_shape == (3, 32, 32)


def test_specs_with_different_sides_are_different_tasks():
    assert TaskSpec("mnist", (1,), (2, 3)) != TaskSpec("mnist", (2, 3), (1,))
    assert TaskSpec("mnist", (1,), (2, 3)) != TaskSpec("mnist", (1,), (2,))
    assert TaskSpec("mnist", (1,), (2, 3)) != TaskSpec("mnist5k", (1,), (2, 3))


@pytest.mark.parametrize(
    ("positive", "negative", "message"),
    [
        ((1, 2), (2, 3), r"mnist:1,2\|2,3.*\[2\] are both positive and negative"),
        ((), (2,), "must be non-empty"),
        ((1,), (), "must be non-empty"),
        ((1,), (10,), r"\[0, 10\).*\[10\]"),
        ((-1,), (3,), r"\[0, 10\).*\[-1\]"),
        ((1, 1), (3,), "repeated classes"),
    ],
)
def test_invalid_specs_are_rejected_clearly(positive, negative, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec("mnist", positive, negative)


def test_spec_of_an_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'.*cifar10"):
        TaskSpec("svhn", (1,), (2,))


@pytest.mark.parametrize("name", ["mnist", "mnist:1,2", "mnist:a|b", "mnist:1|2|3", "x:1|2"])
def test_bad_task_names_show_the_expected_form(name):
    with pytest.raises(ValueError, match=r"bad task name .*'dataset:pos\|neg'"):
        TaskSpec.from_name(name)


# ---------------------------------------------------------------- stream builders


def test_split_gives_disjoint_class_pairs_in_order():
    assert [spec.name for spec in split("mnist")] == [
        "mnist:0|1", "mnist:2|3", "mnist:4|5", "mnist:6|7", "mnist:8|9"]
    assert len(split("cifar100")) == 50
    assert [spec.name for spec in split("cifar10", n_tasks=2)] == ["cifar10:0|1", "cifar10:2|3"]


def test_seeded_split_shuffles_the_classes_reproducibly():
    shuffled = split("mnist", seed=3)
    assert shuffled == split("mnist", seed=3)
    assert shuffled != split("mnist")
    classes = [c for spec in shuffled for c in spec.positive + spec.negative]
    assert sorted(classes) == list(range(10))


def test_one_vs_rest_puts_each_class_against_all_others():
    specs = one_vs_rest("mnist5k")
    assert [spec.positive for spec in specs] == [(d,) for d in range(10)]
    for spec in specs:
        assert set(spec.negative) == set(range(10)) - set(spec.positive)
    assert specs[0].name == "mnist5k:0|1,2,3,4,5,6,7,8,9"
    assert one_vs_rest("cifar10", n_tasks=1)[0].name == "cifar10:0|1,2,3,4,5,6,7,8,9"


@pytest.mark.parametrize(("builder", "n_tasks"), [(split, 6), (split, 0), (one_vs_rest, 11)])
def test_too_many_or_too_few_tasks_is_an_error(builder, n_tasks):
    with pytest.raises(ValueError, match=rf"n_tasks={n_tasks} is out of range"):
        builder("mnist", n_tasks)


@pytest.mark.parametrize("n_tasks", [333, 1000])
def test_tuples_are_distinct_valid_and_seeded(n_tasks):
    specs = tuples("mnist", n_tasks, seed=0)
    assert len(specs) == n_tasks
    assert len({spec.name for spec in specs}) == n_tasks
    for spec in specs:
        assert 1 <= len(spec.positive) <= 3 and 1 <= len(spec.negative) <= 3
        assert not set(spec.positive) & set(spec.negative)
    assert tuples("mnist", n_tasks, seed=0) == specs
    assert tuples("mnist", n_tasks, seed=1) != specs


def test_tuples_bounds_are_checked():
    with pytest.raises(ValueError, match="max_classes_per_side=6"):
        tuples("mnist", 5, max_classes_per_side=6)
    with pytest.raises(ValueError, match="n_tasks=0"):
        tuples("mnist", 0)
    # With one class per side there are only 10 * 9 = 90 distinct tasks.
    assert len(tuples("mnist", 90, max_classes_per_side=1)) == 90
    with pytest.raises(ValueError, match="n_tasks=91 is out of range.* at most 90 such tasks"):
        tuples("mnist", 91, max_classes_per_side=1)


def test_mixed_concatenates_streams_of_different_datasets():
    specs = mixed(one_vs_rest("mnist", 5), one_vs_rest("cifar10", 1))
    assert [spec.dataset for spec in specs] == ["mnist"] * 5 + ["cifar10"]
    assert {spec.input_shape for spec in specs} == {(1, 28, 28), (3, 32, 32)}


def test_streams_table_names_the_builders():
    assert STREAMS == {"split": split, "one_vs_rest": one_vs_rest, "tuples": tuples}


# ---------------------------------------------------------------- class balance


def _binary_labels(n_pos: int, n_neg: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.r_[np.ones(n_pos), np.zeros(n_neg)])


@settings(max_examples=300, deadline=None, database=None)
@given(
    n_pos=st.integers(1, 400),
    n_neg=st.integers(1, 400),
    fraction=st.one_of(st.none(), st.floats(0.05, 0.95)),
    cap=st.one_of(st.none(), st.integers(2, 500)),
    seed=st.integers(0, 2**32 - 1),
)
def test_balanced_indices_properties(n_pos, n_neg, fraction, cap, seed):
    labels = _binary_labels(n_pos, n_neg, seed)
    chosen = balanced_indices(labels, fraction, cap, np.random.default_rng(seed))
    assert len(np.unique(chosen)) == len(chosen), "an example was picked twice"
    assert chosen.min() >= 0 and chosen.max() < len(labels)
    if cap is not None:
        uncapped = balanced_indices(labels, fraction, None, np.random.default_rng(seed))
        assert len(chosen) == min(cap, len(uncapped))
    picked_pos = int(labels[chosen].sum())
    picked_neg = len(chosen) - picked_pos
    assert picked_pos >= 1 and picked_neg >= 1, "a task kept only one class"
    share = picked_pos / len(chosen)
    target = n_pos / (n_pos + n_neg) if fraction is None else fraction
    if fraction is None and cap is None:
        assert (picked_pos, picked_neg) == (n_pos, n_neg)
    # Whole examples: the share is the target up to rounding, one example of the total at
    # most, except where a side keeps its single example (or all but one) to stay present.
    tolerance = 1 / len(chosen) + 1e-12
    if min(picked_pos, picked_neg) > 1:
        assert abs(share - target) <= tolerance


@pytest.mark.parametrize(("n_pos", "n_neg"), [(900, 100), (100, 900), (400, 600)])
def test_the_side_in_excess_is_subsampled(n_pos, n_neg):
    labels = _binary_labels(n_pos, n_neg, 0)
    chosen = balanced_indices(labels, 0.4, None, np.random.default_rng(0))
    picked_pos = int(labels[chosen].sum())
    picked_neg = len(chosen) - picked_pos
    if n_pos / (n_pos + n_neg) > 0.4:  # too many positives: keep every negative
        assert picked_neg == n_neg and picked_pos == round(n_neg * 0.4 / 0.6)
    else:  # too many negatives: keep every positive
        assert picked_pos == n_pos and picked_neg == round(n_pos * 0.6 / 0.4)


def test_subsampling_is_seeded_and_random_in_order():
    labels = _binary_labels(300, 700, 0)
    first = balanced_indices(labels, 0.4, 200, np.random.default_rng(5))
    assert np.array_equal(first, balanced_indices(labels, 0.4, 200, np.random.default_rng(5)))
    assert not np.array_equal(first, balanced_indices(labels, 0.4, 200,
                                                      np.random.default_rng(6)))
    assert not np.all(np.diff(first) > 0), "examples should arrive shuffled"
    assert 0 < labels[first[:100]].mean() < 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_impossible_positive_fraction_is_an_error(fraction):
    with pytest.raises(ValueError, match=rf"positive_fraction={fraction} must be in \(0, 1\)"):
        balanced_indices(np.array([0, 1, 0, 1]), fraction, None, np.random.default_rng(0))


def test_a_cap_below_two_is_an_error():
    with pytest.raises(ValueError, match="cap of 1 .* at least 2"):
        balanced_indices(np.array([0, 1, 0, 1]), None, 1, np.random.default_rng(0))


# ---------------------------------------------------------------- materialise


def _positive_share(task: Task, train: bool) -> float:
    return (task.y_train if train else task.y_test).double().mean().item()


def test_materialize_selects_relabels_and_balances_train_and_test_alike():
    spec = TaskSpec("mnist5k", (1,), (2, 3, 4))
    task = materialize(spec, task_id=4, seed=0)
    assert (task.id, task.spec, task.name, task.dataset) == (4, spec, spec.name, "mnist5k")
    assert task.input_shape == (1, 28, 28)
    for train, n_pos in ((True, 400), (False, 100)):
        data = load_dataset("mnist5k", train=train)
        x, y = (task.x_train, task.y_train) if train else (task.x_test, task.y_test)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert set(y.unique().tolist()) == {0, 1}
        assert int(y.sum()) == n_pos  # every positive kept, negatives cut to 60 %
        assert _positive_share(task, train) == pytest.approx(0.4, abs=0.01)
        # Every example is a real one of the right class, relabelled.
        flat = data.images.flatten(1)
        for image, label in zip(x[:20], y[:20], strict=True):
            source = torch.nonzero((flat == image.flatten()).all(dim=1)).flatten()
            classes = set(data.labels[source].tolist())
            assert classes <= set(spec.positive if label == 1 else spec.negative)
            assert classes


def test_natural_balance_keeps_every_example_of_the_task():
    spec = TaskSpec("mnist5k", (0,), (1, 2, 3, 4, 5, 6, 7, 8, 9))
    task = materialize(spec, task_id=0, seed=0, positive_fraction=None)
    assert (int(task.y_train.sum()), len(task.y_train)) == (400, 4000)
    assert (int(task.y_test.sum()), len(task.y_test)) == (100, 1000)


def test_caps_apply_to_train_and_test_with_the_same_share():
    spec = TaskSpec("mnist5k", (5,), (6, 7))
    task = materialize(spec, task_id=1, seed=0, max_train=50, max_test=20)
    assert (len(task.y_train), len(task.y_test)) == (50, 20)
    assert _positive_share(task, True) == 0.4 and _positive_share(task, False) == 0.4


def test_same_seed_and_position_give_the_same_examples():
    spec = TaskSpec("mnist5k", (1,), (7,))
    task = materialize(spec, task_id=2, seed=11, max_train=100, max_test=40)
    assert task == materialize(spec, task_id=2, seed=11, max_train=100, max_test=40)
    for other in (materialize(spec, task_id=2, seed=12, max_train=100, max_test=40),
                  materialize(spec, task_id=3, seed=11, max_train=100, max_test=40)):
        assert not torch.equal(task.x_train, other.x_train)


def test_the_agent_view_has_no_test_data():
    task = materialize(TaskSpec("mnist5k", (1,), (7,)), task_id=0, seed=0, max_train=10,
                       max_test=10)
    view = task.for_agent()
    assert view.x_test is None and view.y_test is None
    assert view.x_train is task.x_train and view.id == task.id and view.spec == task.spec
    assert "x_test" not in repr(view)


def test_task_normalize_uses_its_dataset_statistics():
    task = materialize(TaskSpec("mnist5k", (1,), (7,)), task_id=0, seed=0, max_train=10,
                       max_test=10)
    zeros = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    assert torch.allclose(task.normalize(zeros), torch.tensor(-0.1307 / 0.3081))


def test_a_tuple_stream_of_more_than_max_tuple_tasks_is_refused_at_once():
    """CIFAR-100 with 50 classes a side has astronomically many tasks; drawing a million
    of them took minutes and gigabytes, so the stream's length is capped."""
    import time

    from clbench.tasks.streams import MAX_TUPLE_TASKS

    began = time.perf_counter()
    with pytest.raises(ValueError, match="a tuple stream has at most 20,000 tasks"):
        tuples("cifar100", 10**6, max_classes_per_side=50)
    assert time.perf_counter() - began < 1.0
    assert len(tuples("cifar100", MAX_TUPLE_TASKS, max_classes_per_side=50)) == MAX_TUPLE_TASKS
    with pytest.raises(ValueError, match="at most 12,990 such tasks"):  # MNIST: its own limit
        tuples("mnist", 13000)
