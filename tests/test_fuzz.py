"""Fuzz tests (hypothesis): task-spec parsing, stream builders, the metric functions and
result validation raise nothing but their documented error, whatever they are given, and
what they accept is usable."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_results import make_result

from clbench import metrics
from clbench.cli import summary_table, task_table
from clbench.data import DATASETS
from clbench.results import Result, ResultFormatError, load_result, validate_result
from clbench.tasks import TaskSpec, check_stream, one_vs_rest, split, tuples

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)
datasets = st.sampled_from([*DATASETS, "svhn", ""])


# ---------------------------------------------------------------- task specs


class_lists = st.lists(st.integers(-3, 120).map(str) | st.text(max_size=3), max_size=4).map(
    ",".join)
near_names = st.builds(lambda d, p, n, sep: f"{d}:{p}{sep}{n}", datasets, class_lists,
                       class_lists, st.sampled_from(["|", "||", ":", ""]))


@FUZZ
@given(st.text(max_size=30) | near_names)
def test_task_names_parse_or_raise_value_error(name):
    try:
        spec = TaskSpec.from_name(name)
    except ValueError as error:
        assert repr(name) in str(error)
        return
    assert TaskSpec.from_name(spec.name) == spec  # what parses, round-trips


# ---------------------------------------------------------------- stream builders

counts = st.none() | st.integers(-3, 400) | st.sampled_from([13000, 10**6, 2**70]) | \
    st.floats(allow_nan=True) | st.booleans() | st.text(max_size=3)
seeds = st.none() | st.integers(-3, 2**64) | st.floats() | st.text(max_size=3)


def _valid_stream(specs, n_tasks):
    assert len({spec.name for spec in specs}) == len(specs)
    if n_tasks is not None:
        assert len(specs) == n_tasks


@FUZZ
@given(st.sampled_from([split, one_vs_rest]), datasets, counts, seeds)
def test_split_and_one_vs_rest_build_or_raise_value_error(builder, dataset, n_tasks, seed):
    try:
        specs = builder(dataset, n_tasks, seed=seed)
    except ValueError:
        return
    _valid_stream(specs, n_tasks)


@FUZZ
@given(datasets, counts, seeds, st.integers(-2, 60) | st.floats() | st.none())
def test_tuples_build_or_raise_value_error(dataset, n_tasks, seed, per_side):
    try:
        specs = tuples(dataset, n_tasks, seed=seed, max_classes_per_side=per_side)
    except ValueError:
        return
    _valid_stream(specs, n_tasks)
    assert all(1 <= len(s.positive) <= per_side and 1 <= len(s.negative) <= per_side
               for s in specs)


@FUZZ
@given(st.sampled_from(["split", "one_vs_rest", "tuples", "nope"]), datasets, counts)
def test_check_stream_counts_or_raises_value_error(stream, dataset, n_tasks):
    try:
        n = check_stream(stream, dataset, n_tasks)
    except ValueError:
        return
    assert n >= 1 and (n_tasks is None or n == n_tasks)


# ---------------------------------------------------------------- metrics

entries = st.none() | st.floats(0, 1) | st.integers(0, 1)
matrices = st.lists(st.lists(entries, max_size=6), max_size=6)


@FUZZ
@given(matrices, st.none() | st.lists(st.floats(0, 1), max_size=7), st.floats(0, 1))
def test_metrics_compute_or_raise_value_error(matrix, baseline, threshold):
    calls = [
        metrics.final_accuracy, metrics.backward_transfer, metrics.forgetting,
        metrics.learning_accuracy, lambda m: metrics.forward_transfer(m, baseline),
        lambda m: metrics.tasks_retained(m, threshold),
        lambda m: metrics.summarize(m, threshold),
    ]
    for call in calls:
        try:
            value = call(matrix)
        except ValueError as error:
            assert "R[" in str(error) or "baseline" in str(error)
            continue
        assert value is None or isinstance(value, int | float | dict)


@FUZZ
@given(st.lists(st.integers(0, 10**9), max_size=5), st.lists(st.integers(0, 10**9), max_size=5))
def test_compression_computes_or_raises_value_error(kept, reference):
    try:
        ratios = metrics.compression(kept, reference)
    except ValueError:
        assert len(kept) != len(reference)
        return
    assert len(ratios) == len(kept)


# ---------------------------------------------------------------- result validation


def _paths(value, prefix=()):
    """Every path into a JSON value, for mutation."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


GOOD = make_result()
PATHS = [path for path in _paths(GOOD) if path]


def _usable(data) -> None:
    """What validates can be shown: both tables render."""
    result = Result(**data)
    summary_table([result])
    task_table(result)


@FUZZ
@given(json_values)
def test_any_json_validates_or_raises_result_format_error(value):
    try:
        validate_result(value)
    except ResultFormatError:
        return
    _usable(value)


@FUZZ
@given(st.sampled_from(PATHS), json_values, st.booleans())
def test_a_result_with_one_field_changed_validates_or_raises(path, value, delete):
    data = copy.deepcopy(GOOD)
    target = data
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    try:
        validate_result(data)
    except ResultFormatError:
        return
    _usable(data)


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_file_loads_or_raises_result_format_error(tmp_path, payload):
    path = tmp_path / "r.json"
    path.write_bytes(payload)
    try:
        result = load_result(path)
    except ResultFormatError as error:
        assert str(path) in str(error)
        return
    _usable(result.to_dict())
