"""The harness: one evaluation path, honest storage, costs, failures that keep their work."""

from __future__ import annotations

import json

import pytest
import torch

from clbench import metrics
from clbench.harness import AgentError, evaluate
from clbench.nets import MNIST_SHAPE, reference_net
from clbench.results import load_result

SMALL = {"max_train_per_task": 120, "max_test_per_task": 40}
SPLIT = "clbench/SplitMNIST5k-v0"


@pytest.fixture(scope="module")
def naive_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "naive.json"
    return evaluate("naive", SPLIT, seed=0, device="cpu", out=out,  # 3 epochs on all the data
                    agent_kwargs={"epochs": 3, "holdout_fraction": 0}), out


def test_naive_run_is_complete_and_its_file_validates(naive_run):
    result, out = naive_run
    assert result.status == "complete"
    assert result.reproducible == [True] * 5  # every replay reproduced its learn bitwise
    loaded = load_result(out)
    assert loaded.accuracy == result.accuracy
    assert [len(row) for row in loaded.accuracy] == [1, 2, 3, 4, 5]
    assert loaded.env["task_names"] == [f"mnist5k:{2 * i}|{2 * i + 1}" for i in range(5)]
    assert loaded.versions["torch"] == torch.__version__


def test_metrics_recomputed_independently_match(naive_run):
    result, _ = naive_run
    R = result.accuracy
    T = len(R)
    acc = sum(R[-1]) / T
    bwt = sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
    forget = sum(max(R[i][j] for i in range(j, T - 1)) - R[-1][j] for j in range(T - 1)) / (T - 1)
    assert result.metrics["acc"] == pytest.approx(acc)
    assert result.metrics["bwt"] == pytest.approx(bwt)
    assert result.metrics["forgetting"] == pytest.approx(forget)
    assert result.metrics["acc"] > 0.85


def test_storage_is_the_serialised_state():
    result = evaluate("agents_for_tests:MeasuresItself", SPLIT, device="cpu",
                      agent_kwargs={"epochs": 1}, env_kwargs=SMALL, flops=False)
    measured = [figures["own_state_bytes"] for figures in result.agent_metrics]
    assert result.storage_bytes == measured
    per_head = 4 * (50 * 2 + 2)
    assert all(b - a >= per_head for a, b in zip(measured, measured[1:], strict=False))
    ref = 4 * 21_432
    assert result.storage["reference_fp32_bytes"] == [ref * k for k in range(1, 6)]
    assert result.storage["compression"][-1] == pytest.approx(5 * ref / measured[-1])


def test_learn_flops_match_the_analytic_count(naive_run):
    result, _ = naive_run
    # Forward FLOPs of the MNIST reference net per example (2 per multiply-add).
    forward = 2 * (10 * 24 * 24 * 25 + 20 * 8 * 8 * 250 + 320 * 50 + 50 * 2)
    first_layer_input_grad = 2 * 10 * 24 * 24 * 25
    per_example = 3 * forward - first_layer_input_grad
    from clbench.tasks import materialize, split

    for task_id, spec in enumerate(split("mnist5k")):
        task = materialize(spec, task_id, seed=0, positive_fraction=None)
        n_train = len(task.y_train)
        expected = per_example * n_train * 3
        assert result.costs["learn_flops"][task_id] == pytest.approx(expected, rel=0.15)
    assert all(s > 0 for s in result.costs["learn_seconds"])
    assert result.costs["learn_peak_memory_bytes"] == [None] * 5  # CPU keeps no statistics
    assert result.costs["predict_flops"][-1] == pytest.approx(forward * 1000, rel=0.01)


def test_agent_hiding_weights_outside_its_state_gains_nothing():
    hidden = evaluate("agents_for_tests:HidesWeights", SPLIT, device="cpu",
                      agent_kwargs={"epochs": 1}, env_kwargs=SMALL, flops=False)
    nothing = evaluate("agents_for_tests:ConstantZero", SPLIT, device="cpu", env_kwargs=SMALL,
                       flops=False)
    assert hidden.accuracy == nothing.accuracy
    assert hidden.storage_bytes == nothing.storage_bytes


def test_state_in_class_attributes_is_gone_in_the_next_worker():
    """The stash is empty in the next task's fresh worker: naive's learn finds no head for
    the earlier task (in one process, the cheat would have worked)."""
    with pytest.raises(AgentError, match=r"failed in learn on task 1 .*IndexError"):
        evaluate("agents_for_tests:ClassAttributeCheat", SPLIT, device="cpu",
                 agent_kwargs={"epochs": 1}, env_kwargs=SMALL, flops=False)


@pytest.mark.parametrize(("agent", "words"), [
    ("WrongShape", ["shape (41,)", "expected (40,)"]),
    ("FloatLabels", ["dtype torch.float32", "integer or bool"]),
    ("NaNLabels", ["NaN"]),
])
def test_bad_predictions_fail_clearly_and_keep_the_file(tmp_path, agent, words):
    out = tmp_path / "bad.json"
    with pytest.raises(AgentError) as caught:
        evaluate(f"agents_for_tests:{agent}", SPLIT, device="cpu", env_kwargs=SMALL,
                 flops=False, out=out)
    message = str(caught.value)
    assert f"agents_for_tests:{agent}" in message
    assert "task 0 (mnist5k:0|1)" in message and "predict" in message
    for word in words:
        assert word in message
    saved = load_result(out)
    assert saved.status == "failed" and saved.error == message
    assert saved.accuracy == []


def test_exception_in_learn_keeps_every_finished_task(tmp_path):
    out = tmp_path / "raises.json"
    with pytest.raises(AgentError, match=r"learn on task 1 \(mnist5k:2\|3\).*out of ideas"):
        evaluate("agents_for_tests:RaisesOnSecondTask", SPLIT, device="cpu", env_kwargs=SMALL,
                 flops=False, out=out)
    saved = load_result(out)
    assert saved.status == "failed"
    assert len(saved.accuracy) == 1 and len(saved.storage["bytes"]) == 1
    data = json.loads(out.read_text())
    assert data["error"].startswith("agent 'agents_for_tests:RaisesOnSecondTask' failed in learn")


def test_states_must_be_tensors_and_plain_values():
    with pytest.raises(AgentError, match=r"state\['thing'\] is a object"):
        evaluate("agents_for_tests:PickledState", SPLIT, device="cpu", env_kwargs=SMALL,
                 flops=False)


def test_unknown_agent_and_bad_kwargs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown agent 'nope'.*registered agents: .*naive"):
        evaluate("nope", SPLIT)
    with pytest.raises(ValueError, match="agent_kwargs must be plain JSON"):
        evaluate("naive", SPLIT, agent_kwargs={"epochs": object()})


def test_local_classes_are_refused_with_the_remedy():
    class Local:
        pass

    with pytest.raises(ValueError, match="define it at module level"):
        evaluate(Local, SPLIT)


def test_compression_against_reference_nets():
    assert metrics.compression([100, 200], [400, 800]) == [4.0, 4.0]
    assert 4 * sum(p.numel() for p in reference_net(MNIST_SHAPE).parameters()) == 85_728


# ----------------------------------------------------------------------------- eval_every
SPARSE = {"n_tasks": 4, "max_train_per_task": 80, "max_test_per_task": 20}
LEARNS = {"epochs": 1, "lr": 0.05}


@pytest.mark.parametrize("query_future", [False, True], ids=["ragged", "query_future"])
def test_eval_every_keeps_diagonal_final_row_and_fwt_exact_and_asks_fewer_queries(
        tmp_path, query_future):
    common = {"device": "cpu", "agent_kwargs": LEARNS, "seal": False,
              "env_kwargs": {**SPARSE, "query_future": query_future}}
    full = evaluate("naive", SPLIT, **common)
    sparse = evaluate("naive", SPLIT, eval_every=3, out=tmp_path / "sparse.json", **common)
    assert load_result(tmp_path / "sparse.json").accuracy == sparse.accuracy  # validates
    assert (sparse.eval_every, full.eval_every, full.eval_note) == (3, 1, None)
    assert "forgetting" in sparse.eval_note and "R every 3" in sparse.eval_note
    for i, (got, want) in enumerate(zip(sparse.accuracy, full.accuracy, strict=True)):
        asked = range(len(want)) if i in (2, 3) else \
            [i, i + 1] if query_future else [i]  # row 2 (3rd) and the last are full
        assert got == [want[j] if j in asked else None for j in range(len(want))], i
        # FLOPs are exact and linear in the queries (20 per task): only those asked were sent
        assert sparse.costs["predict_flops"][i] == full.costs["predict_flops"][i] * len(
            asked) // len(want)
    assert sparse.accuracy[1][0] is None and len(set(full.accuracy[-1])) > 1
    for key in ("acc", "bwt", "learning_accuracy", "retained", "fwt"):
        assert sparse.metrics[key] == full.metrics[key], key
    assert (full.metrics["fwt"] is None) == (not query_future)
    assert sparse.metrics["forgetting"] == metrics.forgetting(sparse.accuracy) \
        <= full.metrics["forgetting"]


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2", None])
def test_a_bad_eval_every_is_refused_before_any_work(tmp_path, value):
    with pytest.raises(ValueError, match=rf"eval_every={value!r}: give a whole number"):
        evaluate("naive", SPLIT, eval_every=value, out=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_eval_every_is_refused_where_a_subset_would_tell_the_task():
    with pytest.raises(ValueError, match="eval_every=2 with scenario='domain'.*eval_every=1"):
        evaluate("naive", "clbench/DomainSplitMNIST5k-v0", eval_every=2)
