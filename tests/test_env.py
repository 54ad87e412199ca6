"""clbench.env: the registered ids, Gymnasium conformance, episodes, seeding and actions."""

from __future__ import annotations

import re

import gymnasium
import numpy as np
import pytest
import torch
from fake_datasets import write_cifar100
from gymnasium.utils import RecordConstructorArgs
from gymnasium.utils.env_checker import check_env
from torchvision import datasets

import clbench
from clbench.env import TaskStreamEnv, crop

OFFLINE_IDS = ["clbench/SplitMNIST5k-v0", "clbench/OneVsRestMNIST5k-v0",
               "clbench/TupleMNIST5k-v0"]
ALL_IDS = [
    "clbench/SplitMNIST-v0", "clbench/OneVsRestMNIST-v0", "clbench/TupleMNIST-v0",
    "clbench/SplitFashionMNIST-v0", "clbench/OneVsRestFashionMNIST-v0",
    "clbench/SplitCIFAR10-v0", "clbench/OneVsRestCIFAR10-v0", "clbench/SplitCIFAR100-v0",
    "clbench/MixedMNISTCIFAR10-v0", "clbench/DomainSplitMNIST-v0",
    "clbench/DomainSplitFashionMNIST-v0", "clbench/DomainSplitMNIST5k-v0", *OFFLINE_IDS,
]
SMALL = {"max_train_per_task": 60, "max_test_per_task": 40}
BACKENDS = ["numpy", "torch"]


def _as_numpy(value):
    return value.cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def _random_labels(obs, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2, size=len(obs["query_task_ids"]))


def _checker_off_for_torch(backend: str) -> dict:
    """make() kwargs that skip Gymnasium's PassiveEnvChecker for torch observations.

    That wrapper (added by ``gymnasium.make``) checks the first observation against the
    numpy spaces and warns "not within the observation space" for torch tensors; Gymnasium
    registers its own jax envs with ``disable_env_checker=True`` for the same reason.
    """
    return {"disable_env_checker": True} if backend == "torch" else {}


def _true_labels(env: gymnasium.Env, n_seen: int) -> torch.Tensor:
    """The answer key of the current queries, read from the env's tasks (for scoring tests)."""
    return torch.cat([env.unwrapped.tasks[j].y_test for j in range(n_seen)])


# ---------------------------------------------------------------- registry


def test_pprint_registry_lists_every_id():
    listing = gymnasium.pprint_registry(disable_print=True)
    for env_id in ALL_IDS:
        assert env_id in listing
    assert sorted(i for i in gymnasium.registry if i.startswith("clbench/")) == sorted(ALL_IDS)


def test_clbench_make_is_gymnasium_make_after_checking_its_arguments():
    made = clbench.make("clbench/SplitMNIST5k-v0", n_tasks=2, **SMALL)
    plain = gymnasium.make("clbench/SplitMNIST5k-v0", n_tasks=2, **SMALL)
    assert made.spec == plain.spec and type(made) is type(plain)
    with pytest.raises(ValueError, match="did you mean clbench/SplitMNIST5k-v0"):
        clbench.make("clbench/SplitMnist5k-v0")


def test_make_kwargs_are_recorded_in_the_spec():
    env = gymnasium.make("clbench/TupleMNIST5k-v0", n_tasks=7, positive_fraction=0.3, **SMALL)
    assert env.spec.kwargs["n_tasks"] == 7
    assert env.spec.kwargs["positive_fraction"] == 0.3
    assert env.spec.kwargs["max_train_per_task"] == 60
    assert env.unwrapped.n_tasks == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream": "random"}, "unknown stream 'random'; choose one of split, one_vs_rest"),
        ({"dataset": "svhn"}, "unknown dataset 'svhn'"),
        ({"tasks": []}, "at least one task"),
        ({"tasks": ["mnist5k:1|2"], "n_tasks": 2}, "n_tasks=2 disagrees with the 1 tasks"),
        ({"tasks": ["mnist5k:1-2"]}, "bad task name 'mnist5k:1-2'"),
        ({"max_train_per_task": 1}, "max_train_per_task=1: give at least 2"),
        ({"max_test_per_task": 0}, "max_test_per_task=0: give at least 2"),
        ({"backend": "jax"}, "backend='jax': choose 'numpy' or 'torch'"),
        ({"n_tasks": 6}, "n_tasks=6 is out of range"),
        ({"device": "tpu"}, "device 'tpu' is not one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gymnasium.make("clbench/SplitMNIST5k-v0", **kwargs)


# ---------------------------------------------------------------- Gymnasium conformance


class _TorchToNumpy(gymnasium.ObservationWrapper, RecordConstructorArgs):
    """Torch observations -> numpy, as ``check_env`` means to do for ``metadata["torch"]``.

    Gymnasium 1.4's ``check_env`` wraps such envs in ``gymnasium.wrappers.TorchToNumpy``,
    which that release does not define (it has ``NumpyToTorch``, not the reverse), so it
    fails with an AttributeError before checking anything. Supplying the conversion lets
    every check run on the torch backend; the fixture leaves a fixed Gymnasium alone.
    """

    def __init__(self, env: gymnasium.Env):
        RecordConstructorArgs.__init__(self)
        gymnasium.ObservationWrapper.__init__(self, env)

    def observation(self, observation):
        return {key: value.cpu().numpy() if torch.is_tensor(value) else value
                for key, value in observation.items()}


@pytest.fixture
def torch_check_env(monkeypatch):
    if not hasattr(gymnasium.wrappers, "TorchToNumpy"):
        monkeypatch.setattr(gymnasium.wrappers, "TorchToNumpy", _TorchToNumpy, raising=False)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", OFFLINE_IDS)
def test_check_env_passes(env_id, backend, torch_check_env):
    check_env(gymnasium.make(env_id, backend=backend).unwrapped)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", OFFLINE_IDS)
def test_random_agent_episode(env_id, backend):
    env = gymnasium.wrappers.RecordEpisodeStatistics(
        gymnasium.make(env_id, backend=backend, **_checker_off_for_torch(backend), **SMALL))
    n_tasks = env.unwrapped.n_tasks
    assert n_tasks == {"clbench/SplitMNIST5k-v0": 5, "clbench/OneVsRestMNIST5k-v0": 10,
                       "clbench/TupleMNIST5k-v0": 50}[env_id]
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=0)
    rewards, steps, terminated = [], 0, False
    while not terminated:
        assert isinstance(obs["query_inputs"], torch.Tensor if backend == "torch" else np.ndarray)
        obs, reward, terminated, truncated, info = env.step(_random_labels(obs, rng))
        steps += 1
        assert not truncated
        assert steps <= n_tasks, "the episode did not end after its last task"
        assert 0.0 <= reward <= 1.0
        assert len(info["accuracies"]) == steps
        assert reward == pytest.approx(np.mean(info["accuracies"]))
        rewards.append(reward)
    assert steps == n_tasks
    assert abs(rewards[-1] - 0.5) < 0.1  # a coin flip per query, ~n_tasks * 40 queries
    assert info["episode"]["l"] == n_tasks
    assert info["episode"]["r"] == pytest.approx(sum(rewards))
    assert len(obs["train_labels"]) == 0 and len(obs["query_task_ids"]) == 0


def test_observations_and_infos_describe_the_new_task():
    env = gymnasium.make("clbench/SplitMNIST5k-v0", **SMALL)
    obs, info = env.reset(seed=0)
    for step in range(3):
        assert env.observation_space.contains(obs)
        task = info["task"]
        assert obs["task_id"] == task.id == step
        assert info["task_name"] == task.name == f"mnist5k:{2 * step}|{2 * step + 1}"
        assert task.x_test is None and task.y_test is None  # agents never see test data
        assert np.array_equal(obs["train_inputs"], task.x_train.numpy())
        assert np.array_equal(obs["train_labels"], task.y_train.numpy())
        assert obs["train_inputs"].dtype == np.uint8 and obs["query_inputs"].dtype == np.uint8
        assert sorted(set(obs["query_task_ids"].tolist())) == list(range(step + 1))
        assert info["n_queries"] == len(obs["query_inputs"]) == len(obs["query_task_ids"])
        assert info["task_names"] == env.unwrapped.task_names
        obs, _, _, _, info = env.step(np.zeros(info["n_queries"], dtype=np.int64))


# ---------------------------------------------------------------- seeding


def _episode(env_id: str, seed: int, **kwargs):
    env = gymnasium.make(env_id, **SMALL, **kwargs)
    rng = np.random.default_rng(123)
    obs, info = env.reset(seed=seed)
    record = {"names": info["task_names"], "observations": [obs], "rewards": [],
              "accuracies": []}
    terminated = False
    while not terminated:
        obs, reward, terminated, _, info = env.step(_random_labels(obs, rng))
        record["observations"].append(obs)
        record["rewards"].append(reward)
        record["accuracies"].append(info["accuracies"])
    return record


def _same_observations(a, b) -> bool:
    return all(np.array_equal(_as_numpy(x[k]), _as_numpy(y[k])) for x, y in zip(a, b, strict=True)
               for k in x)


@pytest.mark.parametrize("env_id", ["clbench/SplitMNIST5k-v0", "clbench/TupleMNIST5k-v0"])
def test_the_same_seed_gives_the_same_episode(env_id):
    kwargs = {"n_tasks": 4} if "Tuple" in env_id else {}
    first, second = _episode(env_id, 7, **kwargs), _episode(env_id, 7, **kwargs)
    assert first["names"] == second["names"]
    assert _same_observations(first["observations"], second["observations"])
    assert first["rewards"] == second["rewards"]
    assert all(np.array_equal(a, b)
               for a, b in zip(first["accuracies"], second["accuracies"], strict=True))
    other = _episode(env_id, 8, **kwargs)
    assert not np.array_equal(first["observations"][0]["train_inputs"],
                              other["observations"][0]["train_inputs"])
    assert not np.array_equal(first["observations"][0]["query_inputs"],
                              other["observations"][0]["query_inputs"])
    if "Tuple" in env_id:  # the stream itself is drawn from the seed
        assert first["names"] != other["names"]


def test_reset_with_the_same_seed_replays_the_episode():
    env = gymnasium.make("clbench/OneVsRestMNIST5k-v0", **SMALL)
    first, _ = env.reset(seed=3)
    env.step(np.ones(len(first["query_task_ids"]), dtype=np.int64))
    again, _ = env.reset(seed=3)
    assert _same_observations([first], [again])


def test_tuple_stream_of_333_tasks():
    env = gymnasium.make("clbench/TupleMNIST5k-v0", n_tasks=333, query_future=True,
                         max_train_per_task=200, max_test_per_task=50)
    _, info = env.reset(seed=0)
    names = info["task_names"]
    assert len(names) == len(set(names)) == 333
    for task in env.unwrapped.tasks:  # query_future materialises every task at reset
        for labels in (task.y_train, task.y_test):
            assert abs(labels.double().mean().item() - 0.40) <= 0.02


# ---------------------------------------------------------------- actions and scoring


@pytest.fixture
def env():
    env = gymnasium.make("clbench/SplitMNIST5k-v0", **SMALL)
    env.reset(seed=0)
    return env


def _n_queries(env) -> int:
    return len(env.unwrapped.tasks[0].y_test)


@pytest.mark.parametrize(
    ("make_action", "message"),
    [
        (lambda n, full: np.zeros(n + 1, dtype=np.int64), r"shape \(41,\); expected .*\(40,\)"),
        (lambda n, full: np.zeros(n - 1, dtype=np.int64), r"shape \(39,\)"),
        (lambda n, full: np.zeros((n, 1), dtype=np.int64), r"shape \(40, 1\)"),
        (lambda n, full: np.int64(1), r"shape \(\)"),
        (lambda n, full: np.full(n, 2), r"values other than 0 and 1, e\.g\. \[2"),
        (lambda n, full: np.full(n, -1), r"values other than 0 and 1, e\.g\. \[-1"),
        (lambda n, full: np.full(n, 0.5), r"values other than 0 and 1, e\.g\. \[0\.5"),
        (lambda n, full: np.full(n, np.nan), "NaN"),
    ],
)
def test_bad_actions_raise_a_clear_error(env, make_action, message):
    n, full = _n_queries(env), env.action_space.n
    with pytest.raises(ValueError, match=message):
        env.step(make_action(n, full))


@pytest.mark.parametrize(
    "convert",
    [lambda y: y.numpy(), lambda y: y.tolist(), lambda y: y, lambda y: y.bool(),
     lambda y: y.float().numpy(), lambda y: [bool(v) for v in y]],
    ids=["numpy", "list", "tensor", "bool-tensor", "float-numpy", "bool-list"],
)
def test_actions_of_every_kind_are_scored(env, convert):
    _, reward, _, _, info = env.step(convert(_true_labels(env, 1)))
    assert reward == 1.0 and info["accuracies"].tolist() == [1.0]


def test_a_full_length_action_reads_only_its_head(env):
    n = _n_queries(env)
    full = np.ones(env.action_space.n, dtype=np.int8)
    full[:n] = 1 - _true_labels(env, 1).numpy()
    assert env.action_space.contains(full)
    _, reward, _, _, _ = env.step(full)
    assert reward == 0.0
    env.reset(seed=0)
    full[:n] = _true_labels(env, 1).numpy()
    _, reward, _, _, _ = env.step(torch.as_tensor(full))
    assert reward == 1.0


def test_reward_is_the_mean_accuracy_over_tasks_seen(env):
    env.step(_true_labels(env, 1))
    # Right on task 0, wrong on task 1: accuracies [1, 0], reward 0.5.
    answer = torch.cat([env.unwrapped.tasks[0].y_test, 1 - env.unwrapped.tasks[1].y_test])
    _, reward, _, _, info = env.step(answer)
    assert info["accuracies"].tolist() == [1.0, 0.0]
    assert info["scored_task_id"] == 1
    assert reward == 0.5


def test_step_before_reset_and_after_the_end_are_errors():
    env = gymnasium.make("clbench/SplitMNIST5k-v0", n_tasks=2, **SMALL).unwrapped
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(np.zeros(env.action_space.n, dtype=np.int8))
    obs, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        obs, _, terminated, _, _ = env.step(np.zeros(len(obs["query_task_ids"]), dtype=np.int8))
    with pytest.raises(RuntimeError, match=r"terminated; call reset\(\)"):
        env.step(np.zeros(0, dtype=np.int8))


def test_query_future_asks_about_every_task():
    env = gymnasium.make("clbench/SplitMNIST5k-v0", query_future=True, **SMALL)
    obs, _ = env.reset(seed=0)
    n_tasks = env.unwrapped.n_tasks
    for step in range(n_tasks):
        assert sorted(set(obs["query_task_ids"].tolist())) == list(range(n_tasks))
        answer = torch.cat([t.y_test for t in env.unwrapped.tasks])
        answer[obs["query_task_ids"] > step] = 1 - answer[obs["query_task_ids"] > step]
        obs, reward, _, _, info = env.step(answer)
        assert len(info["accuracies"]) == n_tasks
        # Right on the tasks seen, wrong on the future ones; the reward counts the seen ones.
        assert info["accuracies"].tolist() == [1.0] * (step + 1) + [0.0] * (n_tasks - step - 1)
        assert reward == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_caps_bound_every_task(backend):
    env = gymnasium.make("clbench/OneVsRestMNIST5k-v0", backend=backend,
                         **_checker_off_for_torch(backend),
                         max_train_per_task=30, max_test_per_task=12)
    obs, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        assert len(obs["train_labels"]) == 30
        counts = np.bincount(_as_numpy(obs["query_task_ids"]))
        assert counts.max() == counts.min() == 12
        obs, _, terminated, _, _ = env.step(np.zeros(len(obs["query_task_ids"]), dtype=np.int8))


def test_torch_backend_keeps_tensors_and_accepts_numpy():
    env = gymnasium.make("clbench/SplitMNIST5k-v0", backend="torch",
                         **_checker_off_for_torch("torch"), **SMALL)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.metadata["torch"] is True
    assert obs["train_inputs"].dtype == torch.uint8
    assert obs["query_task_ids"].dtype == torch.int64
    _, reward, _, _, _ = env.step(_true_labels(env, 1).numpy())
    assert reward == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_keeps_data_and_observations_on_the_gpu():
    env = gymnasium.make("clbench/SplitMNIST5k-v0", device="cuda", backend="torch",
                         **_checker_off_for_torch("torch"), **SMALL)
    obs, info = env.reset(seed=0)
    assert obs["query_inputs"].is_cuda and info["task"].x_train.is_cuda
    answer = _true_labels(env, 1)
    assert answer.is_cuda
    _, reward, _, _, _ = env.step(answer)
    assert reward == 1.0
    _, reward, _, _, _ = env.step(_true_labels(env, 2).cpu().numpy())  # host actions too
    assert reward == 1.0


# ---------------------------------------------------------------- CIFAR and mixed streams


def test_split_cifar10_runs_on_files_in_cifar_format(fake_full_data):
    env = gymnasium.make("clbench/SplitCIFAR10-v0", data_root=fake_full_data)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    steps, terminated = 0, False
    while not terminated:
        assert obs["train_inputs"].shape == (40, 3, 32, 32)  # 2 classes x 5 batches x 4
        assert len(obs["query_task_ids"]) == 20 * (steps + 1)
        obs, reward, terminated, _, info = env.step(_true_labels(env, steps + 1))
        assert reward == 1.0
        steps += 1
    assert steps == 5
    assert env.unwrapped.task_names[0] == "cifar10:0|1"


def test_split_cifar100_runs_on_files_in_cifar_format(tmp_path, fresh_data_cache,
                                                      cifar_checksums_for):
    _, md5 = write_cifar100(tmp_path, train_per_class=3, test_per_class=2)
    cifar_checksums_for(datasets.CIFAR100, md5)
    env = gymnasium.make("clbench/SplitCIFAR100-v0", data_root=tmp_path, n_tasks=3)
    obs, info = env.reset(seed=0)
    assert info["task_names"] == ("cifar100:0|1", "cifar100:2|3", "cifar100:4|5")
    for step in range(3):
        assert obs["train_inputs"].shape == (6, 3, 32, 32)
        obs, reward, terminated, _, _ = env.step(_true_labels(env, step + 1))
        assert reward == 1.0 and terminated == (step == 2)


def test_mixed_stream_pads_inputs_and_gives_native_shapes(fake_full_data):
    env = gymnasium.make("clbench/MixedMNISTCIFAR10-v0", data_root=fake_full_data)
    assert isinstance(env.unwrapped, TaskStreamEnv)
    obs, info = env.reset(seed=0)
    shapes = ((1, 28, 28),) * 5 + ((3, 32, 32),)
    assert info["input_shapes"] == shapes
    assert [name.split(":")[0] for name in info["task_names"]] == ["mnist"] * 5 + ["cifar10"]
    for step in range(6):
        task = info["task"]
        train = torch.as_tensor(obs["train_inputs"])
        assert train.shape[1:] == (3, 32, 32)
        native = crop(train, shapes[step])
        assert torch.equal(native, task.x_train)
        assert native.shape[1:] == task.input_shape == shapes[step]
        assert int(train.sum()) == int(native.sum()), "padding must be zeros"
        # Queries: each task's block crops back to that task's own test inputs.
        queries, ids = torch.as_tensor(obs["query_inputs"]), torch.as_tensor(obs["query_task_ids"])
        for j in range(step + 1):
            block = crop(queries[ids == j], shapes[j])
            assert torch.equal(block, env.unwrapped.tasks[j].x_test)
        assert task.y_train.double().mean().item() == pytest.approx(0.4, abs=0.02)
        obs, reward, terminated, _, info = env.step(_true_labels(env, step + 1))
        assert reward == 1.0
        assert terminated == (step == 5)
