"""EWC, online EWC, SI, LwF and A-GEM: state round trips, exact storage, one offline stream,
and the property that defines each method."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import clbench  # noqa: F401  (registers the environments)
from baselines.agem import AGEM, project_gradient
from baselines.ewc import EWC, OnlineEWC, diagonal_fisher
from baselines.lwf import LwF, distillation_loss, earlier_head_logits
from baselines.regularizers import QuadraticPenalty, split_like, trunk_vector
from baselines.si import SI
from clbench.costs import FLOP_FORMULAS, count_flops
from clbench.data import normalize
from clbench.env import TaskStreamEnv
from clbench.nets import MultiHeadNet
from clbench.tasks import Task, TaskSpec, materialize, split
from clbench.training import fast_layout

FAST = {"epochs": 1}
AGENTS = {
    "ewc": (EWC, {**FAST, "fisher_samples": 64}),
    "online_ewc": (OnlineEWC, {**FAST, "fisher_samples": 64, "gamma": 0.5}),
    "si": (SI, FAST),
    "lwf": (LwF, FAST),
    "agem": (AGEM, {**FAST, "memory_per_task": 24, "memory_batch_size": 16}),
}
TRUNK = 21_330  # parameters of the MNIST trunk
HEAD = 102  # parameters of one 2-way head
IMAGE_BYTES = 28 * 28
METADATA_ALLOWANCE = 8_192  # bytes torch.save may add around the tensors (names, zip records)


@pytest.fixture(scope="module")
def tasks():
    """Three small Split-MNIST5k tasks as an agent receives them (no test data)."""
    return [materialize(spec, i, seed=0, max_train=96).for_agent()
            for i, spec in enumerate(split("mnist5k", 3))]


def learnt(cls, kwargs, tasks, seed=0):
    torch.manual_seed(seed)
    agent = cls(**kwargs)
    for task in tasks:
        agent.learn(task)
    return agent


def reloaded(agent, cls, kwargs):
    """A fresh agent built from ``agent``'s serialised state, as the harness does."""
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(**kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def tensors(state):
    if torch.is_tensor(state):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from tensors(value)
    elif isinstance(state, list | tuple):
        for value in state:
            yield from tensors(value)


def payload_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(state))


def serialised_bytes(state) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def expected_payload(name: str, n_tasks: int, train_per_task: int, trunk: int = TRUNK,
                     head: int = HEAD, image_bytes: int = IMAGE_BYTES) -> int:
    """Each baseline's storage formula, as written in its module docstring."""
    net = 4 * (trunk + n_tasks * head)
    if name == "ewc":
        return net + 4 * n_tasks * trunk + 4 * (n_tasks - 1) * trunk
    if name in ("online_ewc", "si"):
        return net + 4 * trunk
    if name == "agem":
        kept = min(AGENTS["agem"][1]["memory_per_task"], train_per_task)
        return net + n_tasks * kept * (image_bytes + 1 + 2)  # uint8 label, int16 task id
    return net


@pytest.mark.parametrize("name", AGENTS)
def test_round_trip_predicts_and_continues_identically(name, tasks):
    cls, kwargs = AGENTS[name]
    agent = learnt(cls, kwargs, tasks[:2])
    fresh = reloaded(agent, cls, kwargs)
    for task in tasks[:2]:
        before, after = agent.predict(task.x_train, task.id), fresh.predict(task.x_train, task.id)
        assert torch.equal(before, after)
    for continuing in (agent, fresh):
        torch.manual_seed(1)
        continuing.learn(tasks[2])
    assert_states_equal(agent.state_dict(), fresh.state_dict())
    assert torch.equal(agent.predict(tasks[2].x_train, 2), fresh.predict(tasks[2].x_train, 2))


def assert_states_equal(state, other, where="state"):
    if torch.is_tensor(state):
        assert torch.equal(state, other), where
    elif isinstance(state, dict):
        assert state.keys() == other.keys(), where
        for key in state:
            assert_states_equal(state[key], other[key], f"{where}[{key!r}]")
    else:
        assert state == other, where


@pytest.mark.parametrize("name", AGENTS)
def test_state_payload_matches_the_storage_formula(name, tasks):
    cls, kwargs = AGENTS[name]
    torch.manual_seed(0)
    agent = cls(**kwargs)
    for n_tasks, task in enumerate(tasks, start=1):
        agent.learn(task)
        state = agent.state_dict()
        assert payload_bytes(state) == expected_payload(name, n_tasks, len(task.y_train))
        assert 0 < serialised_bytes(state) - payload_bytes(state) <= METADATA_ALLOWANCE


@pytest.mark.parametrize("name", AGENTS)
def test_state_payload_matches_the_storage_formula_for_cifar_shaped_tasks(name):
    cls, kwargs = AGENTS[name]
    generator = torch.Generator().manual_seed(0)
    agent = cls(**kwargs)
    for task_id in range(2):
        images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
        spec = TaskSpec("cifar10", (2 * task_id,), (2 * task_id + 1,))
        agent.learn(Task(task_id, spec, images, torch.arange(40) % 2))
    payload = payload_bytes(agent.state_dict())
    assert payload == expected_payload(name, 2, 40, trunk=61_156, head=170, image_bytes=3 * 32 * 32)


@pytest.mark.parametrize("name", AGENTS)
def test_short_offline_stream_end_to_end(name):
    """Drive the env as the harness does: learn, serialise, continue with a fresh agent."""
    cls, kwargs = AGENTS[name]
    env = TaskStreamEnv(stream="split", dataset="mnist5k", n_tasks=3,
                        max_train_per_task=256, max_test_per_task=64)
    obs, info = env.reset(seed=0)
    stream_kwargs = {**kwargs, "epochs": 2, "lr": 0.05}
    agent, rows = cls(**stream_kwargs), []
    while True:
        torch.manual_seed(info["task"].id)
        agent.learn(info["task"])
        agent = reloaded(agent, cls, stream_kwargs)
        queries = torch.as_tensor(obs["query_inputs"])
        owners = torch.as_tensor(obs["query_task_ids"])
        labels = torch.zeros(len(owners), dtype=torch.int64)
        for task_id in owners.unique().tolist():
            mask = owners == task_id
            labels[mask] = agent.predict(queries[mask], task_id)
        obs, _, terminated, _, info = env.step(labels)
        rows.append(info["accuracies"])
        if terminated:
            break
    assert len(rows) == 3
    learning_accuracy = np.mean([rows[j][j] for j in range(3)])
    assert learning_accuracy > 0.8, rows


# --- EWC -------------------------------------------------------------------------------------


def random_penalty(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    importance = torch.rand(17)
    anchor = torch.cat([p.detach().reshape(-1) for p in params])
    return params, QuadraticPenalty(params, importance, anchor.clone(), scale=3.0)


def set_flat(params, vector):
    with torch.no_grad():
        for p, piece in zip(params, torch.split(vector, [p.numel() for p in params]), strict=True):
            p.copy_(piece.view_as(p))


def test_penalty_is_zero_at_the_anchor_and_quadratic_around_it():
    params, penalty = random_penalty()
    anchor = torch.cat([p.detach().reshape(-1) for p in params])
    assert penalty.value().item() == 0.0
    direction = torch.randn(17)
    set_flat(params, anchor + direction)
    unit = penalty.value().item()
    assert unit > 0
    for t in (-2.0, 0.5, 3.0):
        set_flat(params, anchor + t * direction)
        assert penalty.value().item() == pytest.approx(t * t * unit, rel=1e-5)


def test_penalty_gradient_is_the_autograd_gradient_of_its_value():
    params, penalty = random_penalty(seed=1)
    set_flat(params, torch.randn(17))
    expected = torch.autograd.grad(penalty.value(), params)
    params[0].grad = torch.ones_like(params[0])  # added to an existing gradient
    penalty.add_gradient()
    torch.testing.assert_close(params[0].grad, expected[0] + 1)
    torch.testing.assert_close(params[1].grad, expected[1])


def test_ewc_penalty_is_zero_at_the_anchor_after_one_task(tasks):
    agent = learnt(EWC, AGENTS["ewc"][1], tasks[:1])
    penalty = agent._penalty(trunk_vector(agent.net))
    assert penalty.value().item() == 0.0
    with torch.no_grad():
        agent.net.trunk[0].weight.add_(0.1)
    assert penalty.value().item() > 0


def test_offline_ewc_merged_penalty_is_the_sum_of_per_task_penalties(tasks):
    agent = learnt(EWC, AGENTS["ewc"][1], tasks)
    assert agent.fishers.shape == (3, TRUNK) and agent.anchors.shape == (2, TRUNK)
    last_anchor = trunk_vector(agent.net)
    merged = agent._penalty(last_anchor)
    with torch.no_grad():
        for p in agent.net.trunk.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = list(agent.net.trunk.parameters())
    anchors = list(agent.anchors) + [last_anchor]
    separate = sum(QuadraticPenalty(params, fisher, anchor, agent.ewc_lambda / 2).value()
                   for fisher, anchor in zip(agent.fishers, anchors, strict=True))
    assert merged.value().item() == pytest.approx(separate.item(), rel=1e-4)


@pytest.mark.parametrize("mode", ["true", "predicted", "expected"])
def test_vectorised_fisher_equals_a_per_sample_loop(mode, tasks):
    agent = learnt(EWC, AGENTS["ewc"][1], tasks[:1])
    net, task = agent.net, tasks[0]
    images, labels = task.x_train[:6], task.y_train[:6]
    fisher = diagonal_fisher(net, 0, images, labels, task.dataset, mode, batch_size=4)
    loop = torch.zeros(TRUNK)
    for image, label in zip(images, labels, strict=True):
        log_probs = F.log_softmax(net(normalize(image[None], task.dataset), 0), dim=1)[0]
        probs = log_probs.exp().detach()
        classes = {"true": [(label, 1.0)], "predicted": [(probs.argmax(), 1.0)],
                   "expected": [(c, probs[c]) for c in range(2)]}[mode]
        for c, weight in classes:
            grads = torch.autograd.grad(log_probs[c], list(net.trunk.parameters()),
                                        retain_graph=True)
            loop += weight * torch.cat([g.reshape(-1) for g in grads]).pow(2)
    torch.testing.assert_close(fisher, loop / len(images), rtol=1e-4, atol=1e-9)


def test_online_ewc_fisher_is_gamma_old_plus_new(tasks):
    kwargs = {**AGENTS["online_ewc"][1], "fisher_samples": 10_000}  # every example: no sampling
    agent = learnt(OnlineEWC, kwargs, tasks[:1])
    old = agent.fisher.clone()
    agent.learn(tasks[1])
    new = diagonal_fisher(agent.net, 1, tasks[1].x_train, tasks[1].y_train, "mnist5k", "true")
    torch.testing.assert_close(agent.fisher, 0.5 * old + new, rtol=1e-4, atol=1e-10)
    assert agent.fisher.shape == (TRUNK,)


def test_bad_fisher_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="'bogus'.*true, predicted, expected"):
        EWC(fisher="bogus")


# --- SI, LwF, A-GEM --------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_si_path_integral_matches_a_hand_computed_two_step_trajectory(tasks, momentum):
    """Two full-batch SGD steps (lr, momentum m): g0 at theta0, then theta1 = theta0 -
    lr g0, g1 at theta1, theta2 = theta1 - lr (m g0 + g1). By hand, the path integral is
    w = -g0 . d1 - g1 . d2 = lr g0^2 + lr g1 (m g0 + g1) per parameter and
    omega = max(0, w / ((theta2 - theta0)^2 + xi)). With m = 0.9 the second step is not
    along -g1, so an implementation that summed lr g^2 (or clamped per step) would fail."""
    task = tasks[0]
    lr, damping = 0.05, 0.1
    torch.manual_seed(3)
    agent = SI(epochs=2, lr=lr, momentum=momentum, batch_size=len(task.y_train),
               damping=damping, holdout_fraction=0)
    agent.learn(task)

    torch.manual_seed(3)  # the same draws as SI's first task: the trunk, then the head
    net = MultiHeadNet(task.input_shape)
    net.add_head()
    x = normalize(task.x_train, task.dataset)

    def gradient() -> torch.Tensor:
        """The gradient of the task loss over the whole net (trunk first, then the head)."""
        net.zero_grad()
        F.cross_entropy(net(x, 0), task.y_train).backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])

    def step(direction: torch.Tensor) -> None:
        with torch.no_grad():
            parameters = list(net.parameters())
            for p, d in zip(parameters, split_like(direction, parameters), strict=True):
                p.sub_(lr * d)

    theta0 = trunk_vector(net)
    g0 = gradient()
    step(g0)
    g1 = gradient()
    step(momentum * g0 + g1)
    g0, g1 = g0[:TRUNK], g1[:TRUNK]  # SI's path integral is over the trunk
    theta2 = trunk_vector(net)
    w = lr * g0.pow(2) + lr * g1 * (momentum * g0 + g1)
    expected = (w / ((theta2 - theta0).pow(2) + damping)).clamp_min(0)
    assert torch.allclose(trunk_vector(agent.net), theta2, rtol=1e-5, atol=1e-7)
    assert torch.allclose(agent.omega, expected, rtol=1e-4, atol=1e-9)
    assert agent.omega.shape == (TRUNK,) and expected.abs().sum() > 0


def test_lwf_distillation_is_zero_while_the_net_equals_the_old_net(tasks):
    agent = learnt(LwF, AGENTS["lwf"][1], tasks[:2])
    recorded = agent._record(tasks[2], n_heads=2)
    assert recorded.shape == (len(tasks[2].y_train), 2, 2)
    # the layout LwF records and trains in (conv results differ in the last bit across layouts)
    features = agent.net.trunk(fast_layout(normalize(tasks[2].x_train, "mnist5k")))
    now = earlier_head_logits(agent.net, features, 2)
    assert distillation_loss(now, recorded, temperature=2.0).item() == 0.0
    with torch.no_grad():
        agent.net.trunk[0].weight.add_(0.1 * torch.randn_like(agent.net.trunk[0].weight))
    features = agent.net.trunk(fast_layout(normalize(tasks[2].x_train, "mnist5k")))
    moved = earlier_head_logits(agent.net, features, 2)
    assert distillation_loss(moved, recorded, temperature=2.0).item() > 0


def test_agem_projection_never_opposes_the_reference_gradient():
    torch.manual_seed(0)
    for _ in range(200):
        gradient, reference = torch.randn(50), torch.randn(50)
        projected = project_gradient(gradient, reference)
        agreement = gradient @ reference
        if agreement >= 0:
            assert torch.equal(projected, gradient)
        else:
            assert abs(projected @ reference) <= 1e-4 * gradient.norm() * reference.norm()


def test_agem_step_gradient_agrees_with_the_memory_gradient(tasks):
    kwargs = {**AGENTS["agem"][1], "memory_batch_size": 1_000}  # the whole memory each time
    agent = learnt(AGEM, kwargs, tasks[:2])
    agent.net.add_head()
    agent.datasets.append("mnist5k")
    params = list(agent.net.parameters())
    inputs = normalize(tasks[2].x_train[:64], "mnist5k")
    for sign in (1.0, -1.0):  # the new task's gradient and its opposite: one of them conflicts
        agent.net.zero_grad(set_to_none=True)
        (sign * F.cross_entropy(agent.net(inputs, 2), tasks[2].y_train[:64])).backward()
        agent._project(params)
        step = torch.cat([p.grad.reshape(-1) for p in params])
        reference = torch.autograd.grad(agent._memory_loss(), params, allow_unused=True)
        reference = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                               for p, g in zip(params, reference, strict=True)])
        assert step @ reference >= -1e-6 * step.norm() * reference.norm()


# --- FLOP counting of per-sample gradients (clbench.costs.conv_backward_flops) ---------------


def test_grouped_convolution_backward_counts_each_group_once():
    inputs = torch.randn(2, 8, 10, 10, requires_grad=True)
    weight = torch.randn(8, 2, 3, 3, requires_grad=True)  # 4 groups of 2 -> 2 channels
    grouped = count_flops(lambda: F.conv2d(inputs, weight, groups=4).sum().backward())
    one_group = count_flops(lambda: F.conv2d(inputs[:, :2], weight[:2]).sum().backward())
    assert grouped == 4 * one_group


def test_fisher_flops_are_those_of_one_batched_pass(tasks):
    """vmap runs per-sample conv gradients as grouped convolutions: counted once, not B times."""
    agent = learnt(EWC, AGENTS["ewc"][1], tasks[:1])
    images, labels = tasks[0].x_train[:64], tasks[0].y_train[:64]
    fisher = count_flops(lambda: diagonal_fisher(agent.net, 0, images, labels, "mnist5k", "true"))
    inputs = normalize(images, "mnist5k")
    batched = count_flops(lambda: F.cross_entropy(agent.net(inputs, 0), labels).backward())
    assert fisher == pytest.approx(batched, rel=0.05)


def test_lean_counter_counts_what_torchs_counter_counts(tasks):
    """FlopCounter drops FlopCounterMode's per-module bookkeeping, not a single FLOP: a
    training step with an Adam update, a composite op that decomposes (einsum), and vmap's
    per-sample gradients all total the same under both."""
    agent = learnt(EWC, AGENTS["ewc"][1], tasks[:1])
    images, labels = tasks[0].x_train[:32], tasks[0].y_train[:32]
    optimizer = torch.optim.Adam(agent.net.parameters())

    def work():
        inputs = normalize(images, "mnist5k")
        loss = F.cross_entropy(agent.net(inputs, 0), labels)
        loss = loss + torch.einsum("bi,bi->", inputs.flatten(1), inputs.flatten(1)) * 0
        loss.backward()
        optimizer.step()
        diagonal_fisher(agent.net, 0, images, labels, "mnist5k", "true")

    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as reference:
        work()
    counted = count_flops(work)
    assert counted > 0
    assert counted == reference.get_total_flops()


def test_loading_another_agents_state_names_what_is_missing(tasks):
    naive_like = learnt(LwF, AGENTS["lwf"][1], tasks[:1]).state_dict()
    with pytest.raises(KeyError, match="SI: the state lacks omega"):
        SI().load_state_dict(naive_like)


@pytest.mark.parametrize("name", AGENTS)
def test_a_task_of_another_input_shape_is_refused_by_name(name, tasks):
    cls, kwargs = AGENTS[name]
    agent = learnt(cls, kwargs, tasks[:1])
    cifar = Task(1, TaskSpec("cifar10", (0,), (1,)), torch.zeros((4, 3, 32, 32), dtype=torch.uint8),
                 torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=f"{cls.__name__}: task 1 .* input shape"):
        agent.learn(cifar)


def test_a_penalty_too_strong_for_the_step_size_stops_with_its_value(tasks):
    agent = learnt(EWC, {**AGENTS["ewc"][1], "ewc_lambda": 1e12, "epochs": 4}, tasks[:1])
    with pytest.raises(FloatingPointError, match=r"task 1 .* ewc_lambda=1000000000000\.0"):
        agent.learn(tasks[1])
