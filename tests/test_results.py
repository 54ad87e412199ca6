"""Result files: atomic writes, and validation that names the malformed field."""

from __future__ import annotations

import copy
import json
import re

import pytest

from clbench.results import SCHEMA, Result, ResultFormatError, load_result, validate_result


def make_result(status="complete") -> dict:
    result = Result(
        env={"id": "clbench/SplitMNIST5k-v0", "kwargs": {}, "task_names": ["a:0|1", "a:2|3"]},
        agent={"name": "naive", "kwargs": {}}, seed=0, device="cpu",
        versions={"torch": "x"}, git_commit=None, started_at="2026-01-01T00:00:00+00:00",
        status=status,
        accuracy=[[0.9], [0.8, 0.95]],
        metrics={"acc": 0.875, "bwt": -0.1, "forgetting": 0.1, "learning_accuracy": 0.925,
                 "retained": 1},
        storage={"bytes": [10, 20], "reference_fp32_bytes": [100, 200],
                 "compression": [10.0, 10.0]},
        costs={"learn_seconds": [1.0, 1.0], "learn_flops": [5, 5],
               "learn_peak_memory_bytes": [None, None], "predict_seconds": [0.1, 0.1],
               "predict_flops": [None, None]},
        agent_metrics=[{}, {}],
        sealed=True, isolation={"mode": "workers", "sandbox": "bwrap", "reason": "bubblewrap"},
        reproducible=[True, True],
        finished_at="2026-01-01T00:01:00+00:00", wall_seconds=60.0,
        hosts=[{"first_task": 0, "cpu": "AMD EPYC", "cores": 2, "gpu": None},
               {"first_task": 1, "cpu": "Intel Xeon", "cores": 16, "gpu": None}],
    )
    return result.to_dict()


def test_a_good_result_round_trips(tmp_path):
    path = tmp_path / "deep" / "r.json"
    Result(**make_result()).save(path)
    assert load_result(path).to_dict() == make_result()
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    assert path.read_text().count("\n") > 20  # a final file is indented, for its readers
    Result(**make_result("running")).save(path)  # rewritten after every task: compact
    assert path.read_text().count("\n") == 1
    assert load_result(path).to_dict() == make_result("running")


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d.update(schema="clbench.result/0"), "schema"),
    (lambda d: d.pop("seed"), "seed"),
    (lambda d: d.update(seed="0"), "seed"),
    (lambda d: d["env"].pop("task_names"), "env.task_names"),
    (lambda d: d.update(status="done"), "status"),
    (lambda d: d["accuracy"][1].__setitem__(0, 1.5), "accuracy[1][0]"),
    (lambda d: d["accuracy"][1].__setitem__(1, None), "accuracy[1]"),
    (lambda d: d["storage"]["bytes"].pop(), "storage.bytes"),
    (lambda d: d["costs"]["learn_seconds"].__setitem__(0, "fast"), "costs.learn_seconds[0]"),
    (lambda d: d["metrics"].pop("bwt"), "metrics.bwt"),
    (lambda d: d.update(agent_metrics=[{}]), "agent_metrics"),
    (lambda d: d.update(accuracy=[[0.9]]), "accuracy"),
    (lambda d: d.update(reproducible=[True, False]), "reproducible[1]"),
    (lambda d: d.update(reproducible=[True]), "reproducible"),
    (lambda d: d.update(sealed="yes"), "sealed"),
    (lambda d: d["isolation"].update(sandbox=None), "isolation.sandbox"),
    (lambda d: d.update(fwt_baseline=[0.5]), "fwt_baseline"),
    (lambda d: d.update(status="failed", error=None), "error"),
    (lambda d: d.update(status="interrupted", error="stopped"), "failure"),
    (lambda d: d.update(status="failed", error="x", failure={"kind": "bad luck"}),
     "failure.kind"),
    (lambda d: d.update(hosts={"cpu": "x"}), "hosts"),
    (lambda d: d["hosts"][1].update(first_task=0, cpu="y") or d["hosts"][0].update(first_task=1),
     "hosts[1].first_task"),  # sessions in the order they ran
    (lambda d: d["hosts"][1].update(first_task=3), "hosts[1].first_task"),  # past the rows
    (lambda d: d["hosts"][0].pop("cores"), "hosts[0].cores"),
    (lambda d: d["hosts"][0].update(cores=0), "hosts[0].cores"),
    (lambda d: d["hosts"][0].update(cpu="two\nlines"), "hosts[0].cpu"),
    (lambda d: d["hosts"][1].update(where="here"), "hosts[1].where"),
    (lambda d: d["hosts"][1].update(gpu="NVIDIA H100"), "hosts[1].gpu"),  # a run on cpu
    (lambda d: d.update(device="cuda:0"), "hosts[0].gpu"),  # CUDA names its GPU
])
def test_malformed_results_name_the_field(tmp_path, edit, field):
    data = copy.deepcopy(make_result())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match=rf"field '{re.escape(field)}'"):
        load_result(path)


def test_not_json_is_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ResultFormatError, match="not valid JSON"):
        load_result(path)


def test_a_run_without_the_reproducibility_check_validates():
    data = make_result()
    data.update(reproducible=[None, None], sealed=False,
                isolation={"mode": "in-process", "sandbox": None, "reason": "debugging"})
    validate_result(data)


def test_a_failed_run_with_finished_tasks_validates():
    data = make_result(status="failed")
    data.update(error="agent 'x' failed in learn on task 2",
                failure={"kind": "agent_error", "stage": "learn", "task_id": 2,
                         "traceback": "Traceback ..."})
    validate_result(data)


def test_nan_cannot_be_written(tmp_path):
    data = make_result()
    data["metrics"]["acc"] = float("nan")
    with pytest.raises(ValueError):
        Result(**data).save(tmp_path / "nan.json")
    assert not list(tmp_path.iterdir())


def sparse_result(**changes) -> dict:
    """Three tasks with eval_every=3: rows 0 and 1 hold the task just learned only."""
    data = make_result()
    n = 3
    data["env"]["task_names"] = ["a:0|1", "a:2|3", "a:4|5"]
    data.update(accuracy=[[0.9], [None, 0.95], [0.8, 0.9, 0.99]], eval_every=3,
                eval_note="R every 3: ...", agent_metrics=[{}] * n, reproducible=[True] * n,
                storage={key: [1] * n for key in data["storage"]},
                costs={key: [1] * n for key in data["costs"]})
    return {**data, **changes}


def test_a_sparse_matrix_validates_with_its_schedule_only():
    validate_result(sparse_result())
    for changes, field in [
        ({"eval_every": 1, "eval_note": None}, "accuracy[1][0]"),  # the full matrix: no null
        ({"eval_every": 2}, "accuracy[1][0]"),  # row 1 is the 2nd: a full row
        ({"accuracy": [[0.9], [None, 0.95], [None, 0.9, 0.99]]}, "accuracy[2][0]"),  # last
        ({"accuracy": [[0.9], [0.8, None], [0.8, 0.9, 0.99]]}, "accuracy[1]"),  # diagonal
        ({"eval_note": None}, "eval_note"),
        ({"eval_every": 0}, "eval_every"),
        ({"eval_every": "3"}, "eval_every"),
    ]:
        with pytest.raises(ResultFormatError, match=rf"field '{re.escape(field)}'"):
            validate_result(sparse_result(**changes))
    with pytest.raises(ResultFormatError, match="field 'eval_note'.*eval_every 1"):
        validate_result({**make_result(), "eval_note": "R every 1"})


def test_a_file_written_before_eval_every_reads_as_the_full_matrix(tmp_path):
    data = make_result()
    del data["eval_every"], data["eval_note"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    loaded = load_result(path)
    assert (loaded.eval_every, loaded.eval_note) == (1, None)


def test_a_file_written_before_hosts_reads_as_no_host_recorded(tmp_path):
    from clbench.leaderboard.aggregate import where_ran

    data = make_result()
    data["isolation"]["threads"] = 1
    assert where_ran(Result(**data)) == \
        "cpu (AMD EPYC, 2 cores, 1 thread + Intel Xeon, 16 cores, 1 thread)"
    for host in data["hosts"]:
        host["gpu"] = "NVIDIA H100"
    assert where_ran(Result(**{**data, "device": "cuda:0"})) == "cuda:0 (NVIDIA H100)"
    del data["hosts"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    loaded = load_result(path)
    assert loaded.hosts == [] and where_ran(loaded) == "cpu"
