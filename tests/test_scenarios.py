"""The validation split (evaluation="validation") and the domain-incremental scenario
(scenario="domain"): what the env hands out, what it never reads, what the harness refuses."""

from __future__ import annotations

import importlib
import re

import gymnasium
import numpy as np
import pytest
import torch
from fake_datasets import MNIST_FILES, write_mnist_idx
from gymnasium.utils.env_checker import check_env

from baselines.naive import Naive
from clbench.agent import require_scenario, supported_scenarios
from clbench.data import DatasetNotFoundError, load_dataset
from clbench.env import UNTOLD_TASK
from clbench.env.registration import check_env_kwargs
from clbench.harness import AgentError, deserialize_state, evaluate, serialize_state
from clbench.sealed.calls import predict_queries
from clbench.tasks import stratified_holdout

SPLIT = "clbench/SplitMNIST5k-v0"
DOMAIN = "clbench/DomainSplitMNIST5k-v0"
TINY = {"max_train_per_task": 60, "max_test_per_task": 20, "n_tasks": 2}
SINGLE_HEAD = ["naive", "ewc", "online_ewc", "si", "lwf", "agem", "replay", "joint"]
TASK_ONLY = ["independent", "pnn", "tnen"]


def _rows(images) -> set[bytes]:
    """Each image as bytes, to compare sets of examples."""
    array = images.cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    return {row.tobytes() for row in array}


# ---------------------------------------------------------------- validation split


def test_validation_part_is_held_out_of_what_learn_receives():
    caps = {"max_train_per_task": 60, "n_tasks": 3}
    plain = gymnasium.make(SPLIT, **caps)
    held = gymnasium.make(SPLIT, evaluation="validation", **caps)
    plain_obs, _ = plain.reset(seed=4)
    obs, info = held.reset(seed=4)
    for step in range(3):
        task = held.unwrapped.tasks[step]
        assert task.x_test is None and task.y_test is None
        assert info["task"].x_val is None  # the agent's copy holds no evaluation data
        learn_rows, val_rows = _rows(obs["train_inputs"]), _rows(task.x_val)
        assert len(obs["train_inputs"]) == 48 and len(task.x_val) == 12  # 20% of 60
        assert not learn_rows & val_rows
        # together they are exactly the training data the test-evaluation episode hands out
        assert learn_rows | val_rows == _rows(plain_obs["train_inputs"])
        n_seen = step + 1
        assert len(obs["query_inputs"]) == 12 * n_seen
        assert _rows(obs["query_inputs"]) == set().union(
            *(_rows(held.unwrapped.tasks[j].x_val) for j in range(n_seen)))
        labels = np.zeros(len(obs["query_task_ids"]), dtype=np.int64)
        obs, *_, info = held.step(labels)
        plain_obs, *_ = plain.step(np.zeros(len(plain_obs["query_task_ids"]), dtype=np.int64))


def test_holdout_is_stratified_by_dataset_class():
    classes = np.repeat([3, 5, 7], [50, 31, 19])
    held = stratified_holdout(classes, 0.2, np.random.default_rng(0))
    assert len(held) == 20 and len(set(held.tolist())) == 20
    counts = dict(zip(*np.unique(classes[held], return_counts=True), strict=True))
    assert counts == {3: 10, 5: 6, 7: 4}  # exact shares 10, 6.2, 3.8: largest remainder
    # one-vs-rest: the binary balance of the validation part is the task's balance
    env = gymnasium.make("clbench/OneVsRestMNIST5k-v0", evaluation="validation", n_tasks=2)
    env.reset(seed=0)
    for task in env.unwrapped.tasks[:1]:
        share = task.y_train.double().mean().item()
        assert abs(task.y_val.double().mean().item() - share) <= 1 / len(task.y_val)


def test_validation_split_is_seeded_by_the_episode_seed():
    env = gymnasium.make(SPLIT, evaluation="validation", **TINY)

    def split_of(seed):
        env.reset(seed=seed)
        task = env.unwrapped.tasks[0]
        return _rows(task.x_train), _rows(task.x_val)

    assert split_of(1) == split_of(1)
    assert split_of(1) != split_of(2)


def test_validation_never_loads_the_test_split(tmp_path, fresh_data_cache, monkeypatch,
                                               idx_checksums_for):
    """A data root whose MNIST test files are empty: a validation episode still runs, and no
    test split is ever asked for; a test-evaluation env on the same root fails."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_idx(raw, train_per_class=30, test_per_class=10)
    for name in MNIST_FILES[False]:
        (raw / name).write_bytes(b"")  # present (torchvision checks that) but unreadable
    idx_checksums_for("mnist", raw)
    asked = []

    def recording_load(name, train=True, **kwargs):
        asked.append(train)
        return load_dataset(name, train=train, **kwargs)

    for module in ("clbench.env.task_stream", "clbench.tasks.materialization"):
        monkeypatch.setattr(importlib.import_module(module), "load_dataset", recording_load)
    env = gymnasium.make("clbench/SplitMNIST-v0", data_root=tmp_path, evaluation="validation",
                         n_tasks=2)
    obs, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        obs, reward, terminated, _, _ = env.step(np.zeros(len(obs["query_task_ids"]), int))
    assert asked and not any(train is False for train in asked)
    with pytest.raises((DatasetNotFoundError, RuntimeError, ValueError, OSError)):
        gymnasium.make("clbench/SplitMNIST-v0", data_root=tmp_path, n_tasks=2).reset(seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"evaluation": "val"}, "evaluation='val': choose one of test, validation"),
        ({"validation_fraction": 0.3}, "validation_fraction=0.3 has no effect with "
                                       "evaluation='test'"),
        ({"evaluation": "validation", "validation_fraction": 1.0},
         "validation_fraction=1.0 must be in (0, 1)"),
        ({"scenario": "class"}, "scenario='class': choose one of task, domain"),
    ],
)
def test_bad_evaluation_and_scenario_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gymnasium.make(SPLIT, **kwargs)


def test_a_validation_part_too_small_is_refused():
    with pytest.raises(ValueError, match=re.escape(
            "validation_fraction=0.1 of at most 4 training examples per task holds out none")):
        gymnasium.make(SPLIT, evaluation="validation", validation_fraction=0.1,
                       max_train_per_task=4)
    env = gymnasium.make(SPLIT, evaluation="validation", max_train_per_task=6)
    with pytest.raises(ValueError, match=re.escape(
            "task 0 (mnist5k:0|1): holding out validation_fraction=0.2 of its 6 training "
            "examples leaves the validation part without both labels")):
        env.reset(seed=0)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("kwargs", [{"evaluation": "validation"}, {"scenario": "domain"},
                                    {"scenario": "domain", "evaluation": "validation"}])
def test_check_env_passes_with_validation_and_domain(kwargs):
    env = gymnasium.make(SPLIT, **kwargs)
    assert {k: env.spec.kwargs[k] for k in kwargs} == kwargs  # recorded in the spec
    check_env(env.unwrapped)


# ---------------------------------------------------------------- domain scenario


def test_domain_queries_hide_their_task_and_are_scored_per_task():
    env = gymnasium.make(DOMAIN, max_train_per_task=60, max_test_per_task=20)
    assert env.spec.kwargs["scenario"] == "domain"
    obs, info = env.reset(seed=0)
    assert info["task"].scenario == "domain"
    obs, *_ = env.step(np.zeros(20, dtype=np.int64))
    assert env.observation_space.contains(obs)
    assert (obs["query_task_ids"] == UNTOLD_TASK).all() and len(obs["query_task_ids"]) == 40
    hidden = env.unwrapped._query_ids.cpu().numpy()
    assert sorted(hidden.tolist()) == [0] * 20 + [1] * 20
    assert not np.array_equal(hidden, np.sort(hidden))  # tasks interleaved: order tells nothing
    # label 1 = the first class of each pair, one labelling for every task
    for task in env.unwrapped.tasks[:2]:
        assert task.spec.positive == (2 * task.id,) and task.spec.negative == (2 * task.id + 1,)
    truth = env.unwrapped._query_labels.cpu().numpy()
    answer = np.where(hidden == 1, 1 - truth, truth)
    _, reward, _, _, info = env.step(answer)
    assert info["accuracies"].tolist() == [1.0, 0.0] and reward == 0.5


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        ("clbench/OneVsRestMNIST5k-v0", {},
         "class 1 is positive in task 1 (mnist5k:1|0,2,3,4,5,6,7,8,9) and negative in task 0"),
        ("clbench/TupleMNIST5k-v0", {}, "a 'tuples' stream draws each task's classes at random"),
        (SPLIT, {"tasks": ["mnist5k:1|2", "cifar10:3|4"]}, "this stream mixes cifar10, mnist5k"),
        (SPLIT, {"tasks": ["mnist5k:1|2", "mnist5k:3|1"]},
         "class 1 is negative in task 1 (mnist5k:3|1) and positive in task 0"),
    ],
)
def test_domain_scenario_refuses_streams_without_one_labelling(env_id, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gymnasium.make(env_id, scenario="domain", **kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):  # before any data, as a sweep
        check_env_kwargs(env_id, {"scenario": "domain", **kwargs})  # plans and the CLI starts


def test_domain_scenario_accepts_any_consistently_labelled_task_list():
    env = gymnasium.make(SPLIT, scenario="domain", tasks=["mnist5k:1|2", "mnist5k:3,1|4"])
    env.reset(seed=0)


class _Spy:
    """Records the task ids predict is called with."""

    scenarios = ("task", "domain")

    def __init__(self):
        self.calls = []

    def predict(self, x, task_id):
        self.calls.append((task_id, len(x)))
        return torch.zeros(len(x), dtype=torch.int64)


def test_harness_asks_domain_queries_all_at_once_without_a_task_id():
    env = gymnasium.make(DOMAIN, backend="torch", disable_env_checker=True,
                         max_train_per_task=60, max_test_per_task=20)
    obs, info = env.reset(seed=0)
    obs, *_ = env.step(torch.zeros(20, dtype=torch.int64))
    spy = _Spy()
    predict_queries(spy, obs["query_inputs"], obs["query_task_ids"], info["input_shapes"],
                    torch.device("cpu"))
    assert spy.calls == [(None, 40)]


class _Echo:
    """Answers each query with a bit of its first pixel, and records its calls."""

    def __init__(self):
        self.calls = []

    def predict(self, x, task_id):
        self.calls.append((task_id, x[:, 0, 0, 0].tolist()))
        return (x[:, 0, 0, 0] % 2).to(torch.int64)


def test_each_task_is_asked_once_with_its_queries_in_order_and_answers_land_in_place():
    """Queries of several tasks, interleaved: one call per task, its queries in their
    original order, and every answer at its query's position."""
    task_ids = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    first_pixel = torch.tensor([7, 4, 8, 1, 3, 5, 6], dtype=torch.uint8)
    inputs = torch.zeros(7, 1, 28, 28, dtype=torch.uint8)
    inputs[:, 0, 0, 0] = first_pixel
    echo = _Echo()
    labels = predict_queries(echo, inputs, task_ids, [(1, 28, 28)] * 3, torch.device("cpu"))
    assert echo.calls == [(0, [4, 3]), (1, [1, 6]), (2, [7, 8, 5])]
    assert labels.tolist() == (first_pixel % 2).tolist()


@pytest.mark.parametrize("name", TASK_ONLY)
def test_harness_refuses_a_task_only_agent_before_any_work(name, tmp_path):
    # sealed (the class is read in a worker) for the first, in this process for the others
    seal = name == TASK_ONLY[0]
    out = tmp_path / "result.json"
    with pytest.raises(ValueError, match=re.escape(
            f"agent {name!r} supports the scenario(s) 'task', not scenario='domain'")):
        evaluate(name, DOMAIN, device="cpu", out=out, seal=seal)
    assert not out.exists()
    with pytest.raises(ValueError, match="not scenario='domain'"):
        evaluate(name, SPLIT, device="cpu", env_kwargs={"scenario": "domain"}, out=out,
                 seal=seal)


class _WrongLength:
    """Supports both scenarios, answers one label too many."""

    scenarios = ("task", "domain")

    def __init__(self, device="cpu"):
        pass

    def learn(self, task):
        pass

    def predict(self, x, task_id):
        return torch.zeros(len(x) + 1, dtype=torch.int64)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_broken_domain_prediction_is_named_as_such():
    with pytest.raises(AgentError, match=re.escape(
            "failed in predict on the queries of every task seen (domain-incremental, task not "
            "told): ValueError: predict returned shape (21,) for 20 inputs")):
        evaluate(_WrongLength, DOMAIN, device="cpu", env_kwargs=TINY, flops=False)


class _DomainOnly:
    scenarios = ("domain",)


class _Misdeclared:
    scenarios = "domain"


def test_declared_scenarios_are_checked():
    require_scenario(supported_scenarios(_DomainOnly), "x", "domain")
    with pytest.raises(ValueError, match=r"agent 'x' supports the scenario\(s\) 'domain'"):
        require_scenario(supported_scenarios(_DomainOnly), "x", "task")
    with pytest.raises(TypeError, match="declares scenarios='domain'; give a tuple"):
        supported_scenarios(_Misdeclared)


@pytest.mark.parametrize("name", SINGLE_HEAD)
def test_single_head_baselines_run_a_tiny_domain_stream(name):
    # sealed for the first (the domain scenario through sealed workers); the others test
    # the agents' shared head, the same in this process (every built-in agent runs sealed in
    # test_unseen_tasks)
    result = evaluate(name, DOMAIN, seed=0, device="cpu", agent_kwargs={"epochs": 1},
                      env_kwargs={**TINY, "evaluation": "validation"}, flops=False,
                      seal=name == SINGLE_HEAD[0])
    assert result.status == "complete"
    assert [len(row) for row in result.accuracy] == [1, 2]
    assert result.env["kwargs"]["scenario"] == "domain"
    assert result.env["kwargs"]["evaluation"] == "validation"


def test_domain_agents_keep_one_shared_head():
    env = gymnasium.make(DOMAIN, backend="torch", disable_env_checker=True, **TINY)
    obs, info = env.reset(seed=0)
    agent, sizes = Naive(epochs=1), []
    for _ in range(2):
        agent.learn(info["task"])
        blob = serialize_state(agent.state_dict())
        sizes.append(len(blob))
        obs, *_, info = env.step(torch.zeros(len(obs["query_task_ids"]), dtype=torch.int64))
    heads = agent.net.heads
    assert len(heads) == 2 and heads[0] is heads[1]
    assert sizes[1] - sizes[0] < 4 * 102  # no second head's weights are stored
    fresh = Naive(epochs=1)
    fresh.load_state_dict(deserialize_state(blob, torch.device("cpu")))
    assert fresh.net.heads[0] is fresh.net.heads[1]
    x = env.unwrapped.tasks[0].x_test
    assert torch.equal(fresh.predict(x, None), agent.predict(x, None))
    assert torch.equal(fresh.predict(x, None), fresh.predict(x, 1))


def test_task_incremental_agent_needs_the_task_id():
    env = gymnasium.make(SPLIT, backend="torch", disable_env_checker=True, **TINY)
    _, info = env.reset(seed=0)
    agent = Naive(epochs=1)
    agent.learn(info["task"])
    with pytest.raises(ValueError, match="predict needs the task id, not None"):
        agent.predict(info["task"].x_train, None)
