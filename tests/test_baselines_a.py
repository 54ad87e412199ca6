"""Baselines independent, joint, replay and pnn: state round trip, a short stream end to end,
exact storage, and the property that defines each method."""

from __future__ import annotations

import functools

import pytest
import torch

from baselines.independent import Independent
from baselines.joint import Joint
from baselines.memory import class_balanced_slots, reservoir_slots
from baselines.pnn import PNN
from baselines.replay import Replay
from clbench.agent import load_agent_class
from clbench.harness import check_state, deserialize_state, evaluate, serialize_state
from clbench.nets import reference_net
from clbench.quantize import INT4_MAX, INT8_MAX, dequantize_into, quantize, unpack_int4
from clbench.tasks import Task, TaskSpec, materialize, split

ENV_ID = "clbench/SplitMNIST5k-v0"
SMALL_STREAM = {"n_tasks": 3, "max_train_per_task": 128, "max_test_per_task": 48}
SMALL_TRAINING = {"epochs": 2, "lr": 0.05, "momentum": 0.5, "holdout_fraction": 0}  # learns each
MNIST_PARAMETERS, MNIST_HEAD = 21_432, 102
MNIST_TRUNK = MNIST_PARAMETERS - MNIST_HEAD
PIXELS = 28 * 28
# Serialisation overhead beyond the tensor payload: zip records, pickled names, metadata.
ALLOWANCE_BASE, ALLOWANCE_PER_TENSOR = 2048, 400

AGENTS = [
    ("independent", {}),
    ("independent", {"dtype": "float16"}),
    ("independent", {"dtype": "int8"}),
    ("independent", {"dtype": "int8", "int8_scale": "tensor"}),
    ("independent", {"dtype": "int4"}),
    ("independent", {"dtype": "int4", "delta": True}),
    ("linear", {}),
    ("joint", {}),
    ("replay", {"buffer_size": 50}),
    ("replay", {"buffer_size": 50, "class_balanced": True}),
    ("pnn", {}),
]
AGENT_IDS = [name + "".join(f"-{v}" for v in kwargs.values()) for name, kwargs in AGENTS]


@functools.cache
def stream_tasks(n_tasks: int = 3) -> list[Task]:
    """Small Split-MNIST5k tasks with their test data (agents get ``for_agent()``)."""
    return [materialize(spec, task_id, seed=0, positive_fraction=None, max_train=96, max_test=48)
            for task_id, spec in enumerate(split("mnist5k", n_tasks))]


def synthetic_task(task_id: int, labels: list[int], first_index: int,
                   dataset: str = "mnist5k") -> Task:
    """A task whose example i carries its stream index ``first_index + i`` in two pixels."""
    spec = TaskSpec(dataset, (0,), (1,))
    index = torch.arange(first_index, first_index + len(labels))
    inputs = torch.zeros((len(labels), *spec.input_shape), dtype=torch.uint8)
    inputs[:, 0, 0, 0], inputs[:, 0, 0, 1] = index % 256, index // 256
    return Task(task_id, spec, inputs, torch.tensor(labels, dtype=torch.int64))


def stream_index(inputs: torch.Tensor) -> torch.Tensor:
    return inputs[:, 0, 0, 0].long() + 256 * inputs[:, 0, 0, 1].long()


def round_trip(agent, name: str, kwargs: dict):
    """What the harness does between tasks: serialise the state, load it into a fresh agent."""
    state = agent.state_dict()
    check_state(state)
    fresh = load_agent_class(name)(device="cpu", **kwargs)
    fresh.load_state_dict(deserialize_state(serialize_state(state), torch.device("cpu")))
    return fresh


def tensors(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(
        value, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def payload_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(state))


def learned(name: str, kwargs: dict, n_tasks: int, epochs: int = 0):
    """An agent after ``n_tasks`` tasks with round trips; ``epochs=0`` for storage checks."""
    agent = load_agent_class(name)(device="cpu", epochs=epochs, **kwargs)
    for task in stream_tasks()[:n_tasks]:
        agent.learn(task.for_agent())
        agent = round_trip(agent, name, {"epochs": epochs, **kwargs})
    return agent


# The one setting of these tests run sealed: the storage comparators' quantised states,
# which test_unseen_tasks (every built-in agent sealed, default settings) does not cover
SEALED_SETTING = ("independent", (("dtype", "int4"), ("delta", True)))


@functools.cache
def small_run(name: str, kwargs_items: tuple):
    """A run through the harness, in this process but for :data:`SEALED_SETTING`: these
    tests are about what the agents learn and keep, the same sealed or not, and a sealed run
    adds seconds of worker start-up."""
    return evaluate(name, ENV_ID, seed=0, device="cpu", agent_kwargs={**SMALL_TRAINING,
                    **dict(kwargs_items)}, env_kwargs=SMALL_STREAM, flops=False,
                    seal=(name, kwargs_items) == SEALED_SETTING)


# ----------------------------------------------------------------------------- every baseline
@pytest.mark.parametrize(("name", "kwargs"), AGENTS, ids=AGENT_IDS)
def test_fresh_agent_from_state_predicts_identically(name, kwargs):
    torch.manual_seed(0)
    agent = load_agent_class(name)(device="cpu", epochs=1, **kwargs)
    for task in stream_tasks()[:2]:
        agent.learn(task.for_agent())
    fresh = round_trip(agent, name, {"epochs": 1, **kwargs})
    for task in stream_tasks()[:2]:
        assert torch.equal(fresh.predict(task.x_test, task.id), agent.predict(task.x_test, task.id))
    assert payload_bytes(fresh.state_dict()) == payload_bytes(agent.state_dict())


@pytest.mark.parametrize(("name", "kwargs"), AGENTS, ids=AGENT_IDS)
def test_short_stream_end_to_end(name, kwargs):
    result = small_run(name, tuple(kwargs.items()))
    assert result.status == "complete"
    assert [len(row) for row in result.accuracy] == [1, 2, 3]
    assert result.metrics["learning_accuracy"] > 0.8, result.accuracy
    assert result.storage["bytes"] == sorted(result.storage["bytes"])


@pytest.mark.parametrize(("name", "kwargs"), AGENTS, ids=AGENT_IDS)
def test_state_serialises_to_payload_plus_small_metadata(name, kwargs):
    state = learned(name, kwargs, n_tasks=3).state_dict()
    overhead = len(serialize_state(state)) - payload_bytes(state)
    assert 0 < overhead <= ALLOWANCE_BASE + ALLOWANCE_PER_TENSOR * len(tensors(state))


# ----------------------------------------------------------------------------- independent
@pytest.mark.parametrize(("kwargs", "bytes_per_task"), [
    ({}, 4 * MNIST_PARAMETERS),
    ({"dtype": "float16"}, 2 * MNIST_PARAMETERS),
    ({"dtype": "int8"}, MNIST_PARAMETERS + 4 * (10 + 20 + 50 + 2 + 4)),
    ({"dtype": "int8", "int8_scale": "tensor"}, MNIST_PARAMETERS + 4 * 8),
    ({"dtype": "int4"}, 10_716 + 4 * 86),
    ({"dtype": "int4", "int8_scale": "tensor"}, 10_716 + 4 * 8),
    ({"dtype": "int8", "delta": True}, MNIST_PARAMETERS + 4 * 86),
    ({"dtype": "int4", "delta": True}, 10_716 + 4 * 86),
])
def test_independent_storage_formula(kwargs, bytes_per_task):
    for k in (1, 3):
        assert payload_bytes(learned("independent", kwargs, k).state_dict()) == k * bytes_per_task


@pytest.mark.parametrize(("kwargs", "bytes_per_task"), [
    ({}, 4 * (PIXELS + 1)),
    ({"dtype": "int4"}, (PIXELS + 2) // 2 + 4 * 2),
])
def test_linear_storage_formula(kwargs, bytes_per_task):
    for k in (1, 3):
        assert payload_bytes(learned("linear", kwargs, k).state_dict()) == k * bytes_per_task


def test_delta_nets_start_from_one_seeded_initialisation_that_costs_no_bytes():
    torch.manual_seed(0)
    agent = learned("independent", {"dtype": "int4", "delta": True}, n_tasks=3)  # untrained
    state = agent.state_dict()
    assert isinstance(state["base_seed"], int)
    for stored in state["nets"]:  # no training: the stored change is exactly zero
        assert torch.equal(stored["values"], torch.full_like(stored["values"], 0x88))
    for net in agent.nets:
        for weight, start in zip(net.parameters(), agent.nets[0].parameters(), strict=True):
            assert torch.equal(weight, start)
    torch.manual_seed(1)  # a different global generator: the start comes from the seed alone
    again = round_trip(agent, "independent", {"dtype": "int4", "delta": True, "epochs": 0})
    for weight, start in zip(again.nets[2].parameters(), agent.nets[0].parameters(), strict=True):
        assert torch.equal(weight, start)
    assert not torch.equal(next(agent.nets[0].parameters()),
                           next(reference_net((1, 28, 28)).parameters()))


def test_delta_int4_agent_is_the_delta_float32_agent_with_its_change_quantised():
    tasks = stream_tasks()
    agents = {}
    for dtype in ("float32", "int4"):
        torch.manual_seed(0)
        agents[dtype] = Independent(dtype=dtype, delta=True, epochs=1)
        agents[dtype].learn(tasks[0].for_agent())
    start = agents["float32"]._base((1, 28, 28))
    for weight, approx, initial in zip(agents["float32"].nets[0].parameters(),
                                       agents["int4"].nets[0].parameters(),
                                       start.parameters(), strict=True):
        change = (weight - initial).detach()
        rows = weight.shape[0] if weight.dim() > 1 else 1
        step = change.abs().reshape(rows, -1).amax(dim=1) / INT4_MAX
        error = (weight - approx).detach().abs().reshape(rows, -1).amax(dim=1)
        assert (error <= step / 2 * (1 + 1e-4) + 1e-7).all()


@pytest.mark.parametrize(("name", "kwargs"), [
    ("independent", {}), ("independent", {"dtype": "int8"}), ("pnn", {}), ("linear", {})])
def test_independent_and_pnn_never_forget(name, kwargs):
    result = small_run(name, tuple(kwargs.items()))
    for i, row in enumerate(result.accuracy):
        assert row == [result.accuracy[j][j] for j in range(i + 1)]
    assert result.metrics["bwt"] == 0.0 and result.metrics["forgetting"] == 0.0


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "tensor"])
def test_integer_quantisation_error_is_at_most_half_a_step(per_channel, dtype):
    torch.manual_seed(0)
    net = reference_net((1, 28, 28))
    with torch.no_grad():  # channels of very different magnitudes, as trained nets have
        for weight in net.parameters():
            weight.mul_(torch.logspace(-2, 1, weight.shape[0]).view(-1, *[1] * (weight.dim() - 1)))
    mode = "channel" if per_channel else "tensor"
    stored = quantize(net, dtype, mode)
    levels = INT8_MAX if dtype == "int8" else INT4_MAX
    values = stored["values"] if dtype == "int8" else unpack_int4(stored["values"], 21_432)
    assert values.dtype == torch.int8 and values.abs().max() == levels
    if dtype == "int4":  # two values a byte
        assert stored["values"].dtype == torch.uint8 and stored["values"].numel() == 10_716
    restored = dequantize_into(reference_net((1, 28, 28)), stored, mode)
    for weight, approx in zip(net.parameters(), restored.parameters(), strict=True):
        rows = weight.shape[0] if per_channel and weight.dim() > 1 else 1
        step = weight.detach().abs().reshape(rows, -1).amax(dim=1) / levels
        error = (weight - approx).detach().abs().reshape(rows, -1).amax(dim=1)
        assert (error <= step / 2 * (1 + 1e-5)).all()
        assert (error > 0).any()


def test_int8_agent_is_the_float32_agent_quantised():
    tasks = stream_tasks()
    agents = {}
    for dtype in ("float32", "int8"):
        torch.manual_seed(0)
        agents[dtype] = Independent(dtype=dtype, epochs=1)
        agents[dtype].learn(tasks[0].for_agent())
    float_net, int8_net = agents["float32"].nets[0], agents["int8"].nets[0]
    for weight, approx in zip(float_net.parameters(), int8_net.parameters(), strict=True):
        rows = weight.shape[0] if weight.dim() > 1 else 1
        step = weight.detach().abs().reshape(rows, -1).amax(dim=1) / INT8_MAX
        assert ((weight - approx).detach().abs().reshape(rows, -1).amax(dim=1)
                <= step / 2 * (1 + 1e-5)).all()
    x = tasks[0].x_test
    agreement = (agents["float32"].predict(x, 0) == agents["int8"].predict(x, 0)).float().mean()
    assert agreement >= 0.97


def test_independent_handles_mixed_input_shapes():
    agent = Independent(epochs=0)
    agent.learn(synthetic_task(0, [0, 1] * 4, 0))
    agent.learn(synthetic_task(1, [0, 1] * 4, 8, dataset="cifar10"))
    fresh = round_trip(agent, "independent", {"epochs": 0})
    assert fresh.predict(torch.zeros((2, 3, 32, 32), dtype=torch.uint8), 1).shape == (2,)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="int2"):
        Independent(dtype="int2")
    with pytest.raises(ValueError, match="delta='yes'"):
        Independent(delta="yes")
    with pytest.raises(TypeError, match="learning_rate"):
        Independent(learning_rate=0.1)
    with pytest.raises(ValueError, match="row"):
        Independent(dtype="int8", int8_scale="row")
    with pytest.raises(ValueError, match="buffer_size=-1"):
        Replay(buffer_size=-1)
    with pytest.raises(ValueError, match="replay_batch_size=0"):
        Replay(replay_batch_size=0)
    saved = Independent(dtype="int8", epochs=0)
    saved.learn(stream_tasks()[0].for_agent())
    with pytest.raises(ValueError, match="dtype='int8'"):
        Independent(dtype="float32").load_state_dict(saved.state_dict())


@pytest.mark.parametrize("cls", [Joint, Replay, PNN])
def test_shared_network_methods_reject_a_second_input_shape(cls):
    agent = cls(epochs=0)
    agent.learn(synthetic_task(0, [0, 1] * 4, 0))
    with pytest.raises(ValueError, match=r"input shape \(3, 32, 32\)"):
        agent.learn(synthetic_task(1, [0, 1] * 4, 8, dataset="cifar10"))


# ----------------------------------------------------------------------------- joint
def test_joint_stores_every_training_example_and_grows_with_each_task():
    stored = 0
    for k, task in enumerate(stream_tasks(), start=1):
        state = learned("joint", {}, k).state_dict()
        stored += len(task.y_train)
        assert len(state["task_data"]) == k
        assert torch.equal(state["task_data"][k - 1]["inputs"], task.x_train)
        assert torch.equal(state["task_data"][k - 1]["labels"].long(), task.y_train)
        assert payload_bytes(state) == 4 * (MNIST_TRUNK + k * MNIST_HEAD) + (PIXELS + 1) * stored


# ----------------------------------------------------------------------------- replay
def test_replay_storage_formula_and_capacity():
    offered = 0
    for k, task in enumerate(stream_tasks(), start=1):
        state = learned("replay", {"buffer_size": 150}, k).state_dict()
        offered += len(task.y_train)
        kept = min(150, offered)
        assert state["seen"] == offered and len(state["buffer"]["labels"]) == kept
        assert payload_bytes(state) == 4 * (MNIST_TRUNK + k * MNIST_HEAD) + (PIXELS + 1 + 2) * kept


@pytest.mark.parametrize("replay_batch_size", [5, 64])
def test_replay_joins_each_batch_of_the_new_task_with_replay_batch_size_buffer_examples(
        monkeypatch, replay_batch_size):
    import baselines.memory as memory
    sizes, loss = [], memory.multitask_loss

    def counted(net, batch, datasets):
        sizes.append((len(batch["labels"]), int((batch["task_ids"] < 1).sum())))
        return loss(net, batch, datasets)

    monkeypatch.setattr(memory, "multitask_loss", counted)
    agent = Replay(epochs=1, holdout_fraction=0, batch_size=8, replay_batch_size=replay_batch_size)
    tasks = stream_tasks(2)
    agent.learn(tasks[0].for_agent())
    sizes.clear()
    agent.learn(tasks[1].for_agent())
    full_batches = len(tasks[1].y_train) // 8
    assert sizes[:full_batches] == [(8 + replay_batch_size, replay_batch_size)] * full_batches


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.double().mean()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def test_reservoir_keeps_a_uniform_sample_of_the_stream():
    generator = torch.Generator().manual_seed(0)
    chunks, capacity, trials = [130, 7, 400, 63, 400], 100, 300
    inclusion = torch.zeros(sum(chunks))
    for _ in range(trials):
        held = torch.full((capacity,), -1)
        seen = 0
        for size in chunks:
            slots = reservoir_slots(seen, size, capacity, generator)
            for source, slot in enumerate(slots.tolist()):
                if slot >= 0:
                    held[slot] = seen + source
            seen += size
        assert (held >= 0).all() and len(held.unique()) == capacity
        inclusion[held] += 1
    deciles = inclusion.reshape(10, -1).sum(dim=1)
    assert chi_square(deciles) < 27.88  # chi-square, 9 degrees of freedom, p = 0.001


def test_replay_buffer_is_uniform_over_tasks_across_state_round_trips():
    per_task = torch.zeros(4)
    for trial in range(40):
        torch.manual_seed(trial)
        agent, offered = Replay(epochs=0, buffer_size=30), 0
        for task_id, size in enumerate([40, 90, 10, 60]):
            agent.learn(synthetic_task(task_id, [0, 1] * (size // 2), offered))
            agent = round_trip(agent, "replay", {"epochs": 0, "buffer_size": 30})
            offered += size
            index = stream_index(agent.buffer["inputs"])
            assert len(index) == min(30, offered) and len(index.unique()) == len(index)
        per_task += torch.bincount(agent.buffer["task_ids"].long(), minlength=4)
    expected = 40 * 30 * torch.tensor([40, 90, 10, 60]) / 200
    statistic = float(((per_task - expected) ** 2 / expected).sum())
    assert statistic < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_class_balanced_reservoir_evens_out_an_imbalanced_stream():
    generator = torch.Generator().manual_seed(0)
    stream = torch.tensor([0] * 20 + [1] * 200)[torch.randperm(220, generator=generator)]
    stream = torch.cat([stream, torch.tensor([2, 3] * 100)])  # then two classes of 100 each
    seen, full = [], []
    slots = class_balanced_slots(torch.zeros(0), stream, seen, full, 40, generator)
    held = torch.full((40,), -1)
    for source, slot in enumerate(slots.tolist()):
        if slot >= 0:
            held[slot] = stream[source]
    assert seen == [20, 200, 100, 100]
    assert torch.bincount(held, minlength=4).tolist() == [10, 10, 10, 10]


# ----------------------------------------------------------------------------- pnn
def test_pnn_storage_formula():
    for k in (1, 2, 3):
        parameters = 21_432 * k + 21_180 * (k - 1) + 3_003 * k * (k - 1) // 2
        assert payload_bytes(learned("pnn", {}, k).state_dict()) == 4 * parameters


def test_pnn_earlier_columns_do_not_change_while_learning_a_later_task():
    tasks = stream_tasks()
    torch.manual_seed(0)
    agent = PNN(epochs=1)
    agent.learn(tasks[0].for_agent())
    before = {k: v.clone() for k, v in agent.state_dict()["net"].items()}
    answers = agent.predict(tasks[0].x_test, 0)
    agent.learn(tasks[1].for_agent())
    after = agent.state_dict()["net"]
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(agent.predict(tasks[0].x_test, 0), answers)
    # The new column reads the frozen one through its lateral adapters:
    x = tasks[1].normalize(tasks[1].x_test)
    with torch.no_grad():
        logits = agent.net(x, 1)
        agent.net.columns[0].layers[1].weight.mul_(2.0)
        assert not torch.allclose(agent.net(x, 1), logits)


@pytest.mark.parametrize("cached_columns", [1, 2])
def test_pnn_trains_the_same_with_cached_frozen_activations(monkeypatch, cached_columns):
    """The cache (all of the earlier columns, or only the first that fit) changes speed only:
    the weights and answers equal those of running every frozen column per step."""
    import baselines.pnn as pnn

    def learned_weights(cache_bytes: int):
        monkeypatch.setattr(pnn, "ACTIVATION_CACHE_BYTES", cache_bytes)
        torch.manual_seed(0)
        agent = PNN(epochs=2, holdout_fraction=0.25)
        for task in stream_tasks():
            agent.learn(task.for_agent())
        return agent

    per_column = pnn.activation_bytes(pnn.Column((1, 28, 28), 0), (1, 28, 28))
    n_train = len(stream_tasks()[2].y_train)
    uncached, cached = learned_weights(0), learned_weights(cached_columns * per_column * n_train)
    for key, value in uncached.state_dict()["net"].items():
        torch.testing.assert_close(cached.state_dict()["net"][key], value, rtol=0, atol=1e-6)
    for task_id, task in enumerate(stream_tasks()):
        assert torch.equal(cached.predict(task.x_test, task_id),
                           uncached.predict(task.x_test, task_id))


# ----------------------------------------------------------------------------- table script
def test_baselines_table_has_a_row_per_agent_and_stream(capsys):
    from benchmarks import baselines_table

    assert baselines_table.parse_agent("independent,dtype=int8,epochs=1") == (
        "independent", {"dtype": "int8", "epochs": 1})
    assert baselines_table.main([
        "--agents", "independent,epochs=0", "pnn,epochs=0", "--envs", ENV_ID, "--seeds", "0", "1",
        "--env-arg", "n_tasks=2", "--env-arg", "max_train_per_task=8", "--no-flops",
        "--no-seal"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:3] for row in rows[1:]] == [
        ["| independent,epochs=0", ENV_ID, "2"], ["| pnn,epochs=0", ENV_ID, "2"]]
    assert all(row.split(" | ")[4] == "0.000 ± 0.000" for row in rows[1:])  # BWT


def test_baselines_table_reuses_a_kept_sealed_result(tmp_path, capsys, monkeypatch):
    from benchmarks import baselines_table

    argv = ["--agents", "independent,epochs=0", "--envs", ENV_ID, "--seeds", "0", "--env-arg",
            "n_tasks=2", "--env-arg", "max_train_per_task=8", "--no-flops",
            "--out-dir", str(tmp_path)]
    assert baselines_table.main(argv) == 0
    first = capsys.readouterr().out
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_more_runs(*args, **kwargs):
        raise AssertionError("a kept result was run again")

    monkeypatch.setattr(baselines_table, "evaluate", no_more_runs)
    assert baselines_table.main(argv) == 0
    assert capsys.readouterr().out == first
    with pytest.raises(AssertionError, match="run again"):  # another stream is not reused
        baselines_table.main([*argv, "--env-arg", "n_tasks=1"])
