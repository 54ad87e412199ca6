"""The TN+EN reference agent: chunk layout, latent packing, the contractive penalty, the
state round trip and short offline streams end to end."""

from __future__ import annotations

import io
import json
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import clbench
from agents.tnen import PRESETS, RECIPES, TNEN, ContractiveAutoencoder
from agents.tnen.chunks import (
    from_chunks,
    pack_latents,
    quantize_latents,
    to_chunks,
    unpack_latents,
)
from agents.tnen.consolidation import Candidate, consolidate, refine_codes, step_loss
from agents.tnen.task_network import (
    accuracy,
    build_task_network,
    flatten_parameters,
    load_parameters,
)
from clbench.agent import load_agent_class
from clbench.costs import count_flops
from clbench.data import normalize
from clbench.harness import check_state
from clbench.nets import count_parameters
from clbench.recipe import DEFAULT
from clbench.tasks import Task

# Small and fast: at most five epochs per TN, few EN steps, a small EN.
FAST = {"epochs": 5, "en_max_steps": 100, "en_check_every": 20, "latent_size": 32,
        "chunk_size": 160, "replay_chunks": 64, "en_lr": 1e-3, "seed": 0}


def stream(env_id: str, n_tasks: int | None = None, **kwargs):
    """The tasks of a short offline stream, with their test data (for scoring here)."""
    extra = {} if n_tasks is None else {"n_tasks": n_tasks}
    env = clbench.make(env_id, max_train_per_task=200, max_test_per_task=100, **extra,
                       **kwargs).unwrapped
    env.reset(seed=0)
    return [env.task(i) for i in range(env.n_tasks)]


def accuracy_on(agent, task) -> float:
    return (agent.predict(task.x_test, task.id) == task.y_test).double().mean().item()


def round_trip(agent: TNEN, **kwargs) -> tuple[TNEN, int]:
    """What the harness does between tasks: save, count bytes, fresh agent, load."""
    state = agent.state_dict()
    check_state(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    size = buffer.tell()
    buffer.seek(0)
    fresh = TNEN(**kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh, size


# ---------------------------------------------------------------- chunk layout
@settings(max_examples=50, deadline=None)
@given(length=st.integers(1, 700), chunk_size=st.integers(1, 64))
def test_chunks_pad_with_zeros_and_round_trip_exactly(length, chunk_size):
    vector = torch.randn(length)
    chunks = to_chunks(vector, chunk_size)
    assert chunks.shape == (-(-length // chunk_size), chunk_size)
    assert torch.equal(chunks.reshape(-1)[length:], torch.zeros(chunks.numel() - length))
    assert torch.equal(from_chunks(chunks, length), vector)


def test_flatten_and_load_parameters_round_trip():
    net = build_task_network("reference", (1, 28, 28))
    assert count_parameters(net) == 21_432
    vector = torch.randn(21_432)
    assert torch.equal(flatten_parameters(load_parameters(net, vector)), vector)
    vector[0] = 99.0  # the net holds a copy, not a view of the vector
    assert flatten_parameters(net)[0] != 99.0
    with pytest.raises(ValueError, match="21432 parameters"):
        load_parameters(net, torch.zeros(10))


def test_architecture_specs():
    assert count_parameters(build_task_network("reference", (3, 32, 32))) == 61_326
    mlp = build_task_network("mlp:32", (1, 28, 28))
    assert count_parameters(mlp) == 784 * 32 + 32 + 32 * 2 + 2
    assert mlp(torch.zeros(5, 1, 28, 28)).shape == (5, 2)
    for bad in ("resnet", "mlp:0", "mlp:a,b"):
        with pytest.raises(ValueError, match="unknown architecture"):
            build_task_network(bad, (1, 28, 28))


# ---------------------------------------------------------------- latents
@pytest.mark.parametrize("bits", [4, 8, 16, 32])
@pytest.mark.parametrize("rows", [1, 3])
def test_packed_latents_unpack_to_their_quantised_values(bits, rows):
    latents = torch.rand(rows, 5) * 2 - 1  # 5 columns: an odd count of 4-bit codes
    latents[0, :2] = torch.tensor([-1.0, 1.0])
    quantised = quantize_latents(latents, bits)
    stored = pack_latents(quantised, bits)
    assert torch.equal(unpack_latents(stored, bits, (rows, 5)), quantised)
    assert torch.equal(quantize_latents(quantised, bits), quantised)  # idempotent
    bytes_per_code = {4: 0.5, 8: 1, 16: 2, 32: 4}[bits]
    assert stored.numel() * stored.element_size() == -(-rows * 5 * bytes_per_code // 1)
    assert (quantised - latents).abs().max() <= {4: 1 / 14, 8: 1 / 254, 16: 1e-3, 32: 0}[bits]


# ---------------------------------------------------------------- contractive penalty
@pytest.mark.parametrize("hidden", [[], [6], [6, 5]])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_contractive_penalty_is_the_squared_frobenius_norm_of_the_jacobian(hidden, activation):
    torch.manual_seed(0)
    en = ContractiveAutoencoder(7, hidden, 3, activation).double()
    x = torch.randn(4, 7, dtype=torch.double)
    latents, penalty = en.encode_with_penalty(x)
    assert torch.allclose(latents, en.encode(x))
    for row, value in zip(x, penalty, strict=True):
        jacobian = torch.autograd.functional.jacobian(en.encode, row)
        assert jacobian.shape == (3, 7)
        assert torch.allclose(value, jacobian.pow(2).sum())


def test_closed_form_penalty_is_the_authors_formula():
    """sum_j (h_j (1 - h_j))^2 |W_j|^2 over the latent units h and the last encoder layer's
    rows W_j: exactly the Jacobian norm of a one-layer sigmoid encoder, and (as in the
    authors' code) the same expression, not tanh's slope, when the units are tanh."""
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.double)
    sigmoid = ContractiveAutoencoder(7, [], 3, "sigmoid", penalty="closed_form").double()
    exact = ContractiveAutoencoder(7, [], 3, "sigmoid").double()
    exact.load_state_dict(sigmoid.state_dict())
    assert torch.allclose(sigmoid.encode_with_penalty(x)[1], exact.encode_with_penalty(x)[1])
    tanh = ContractiveAutoencoder(7, [6], 3, "tanh", penalty="closed_form").double()
    h, penalty = tanh.encode_with_penalty(x)
    by_hand = torch.stack([sum((h[i, j] * (1 - h[i, j])) ** 2
                               * tanh.encoder[-1].weight[j].pow(2).sum() for j in range(3))
                           for i in range(4)])
    assert torch.allclose(penalty, by_hand)
    with pytest.raises(ValueError, match="penalty='jacobian'"):
        ContractiveAutoencoder(7, [], 3, "tanh", penalty="jacobian")


@pytest.mark.parametrize(("n", "hidden", "latent", "chunks"), [(8, 4, 2, 3), (10, 6, 3, 5)])
def test_paper_preset_flops_per_en_step_match_the_authors_formula(n, hidden, latent, chunks):
    """One EN step of the paper preset (one skill's chunks, b of them) by hand: each linear
    layer (in, out) costs 2 b in out forward and twice that backward (gradients of its
    weights and of its input), except the input gradient of the first layer, which nothing
    needs; the closed-form penalty adds no matrix product. So
    FLOPs = 6 b (n h + h l + l h + h n) - 2 b n h. (The exact Jacobian norm would add a
    (b, l, n) Jacobian.) On the authors' 21,432 -> 2,000 -> 20 EN, a 4-chunk step is
    1,716,480,000 FLOPs."""
    config = {**PRESETS["paper"], "chunk_size": n, "hidden_sizes": [hidden],
              "latent_size": latent}
    torch.manual_seed(0)
    en = ContractiveAutoencoder.from_config(config)
    batch = torch.randn(chunks, n)
    counted = count_flops(lambda: step_loss(en, config, batch, batch[:0]).backward())
    layers = n * hidden + hidden * latent + latent * hidden + hidden * n
    assert counted == 6 * chunks * layers - 2 * chunks * n * hidden
    exact = ContractiveAutoencoder.from_config({**config, "penalty": "exact"})
    assert count_flops(lambda: step_loss(exact, config, batch, batch[:0]).backward()) > counted

    with torch.device("meta"):
        full = ContractiveAutoencoder.from_config(PRESETS["paper"])
        four = torch.zeros(4, PRESETS["paper"]["chunk_size"])
    assert count_flops(lambda: step_loss(full, PRESETS["paper"], four, four[:0]).backward()
                       ) == 1_716_480_000


def test_paper_preset_follows_the_authors_recipe():
    """The authors' TN training, as a recipe: SGD lr 0.01, momentum 0.5, batch 64, exactly 3
    epochs on all training data (nothing held out, no early stop); and one EN iteration =
    one Adam step per stored skill."""
    tiny = {"chunk_size": 2_000, "hidden_sizes": [16], "latent_size": 4, "en_max_steps": 6,
            "en_check_every": 3, "seed": 0}
    tasks = stream("clbench/SplitMNIST5k-v0", n_tasks=2)
    agent = TNEN(preset="paper", **tiny)
    n = len(tasks[0].y_train)
    _, trained = agent.task_network(tasks[0].for_agent())
    assert (trained.epochs, trained.steps) == (3, 3 * -(-n // 64))
    assert torch.equal(trained.train_index, torch.arange(n)) and len(trained.holdout_index) == 0
    assert trained.holdout_accuracy is None
    for task in tasks:
        agent.learn(task.for_agent())
    metrics = agent.metrics()
    assert metrics["en_backprop_calls"] == 2 * metrics["en_iterations"]  # two skills stored
    assert metrics["recipe"] == {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5,
                                 "batch_size": 64, "epochs": 3, "holdout_fraction": 0,
                                 "patience": DEFAULT.patience}
    assert metrics["epochs_trained"] == 3 and metrics["holdout_accuracy"] is None
    assert TNEN(preset="paper", epochs=45).recipe == RECIPES["paper"].replace(epochs=45)


def test_settings_that_need_held_out_data_are_refused_without_a_hold_out():
    with pytest.raises(ValueError, match="accuracy_tolerance=0.005 judges held-out accuracy, "
                       "but holdout_fraction=0 holds nothing out; set holdout_fraction > 0"):
        TNEN(preset="paper", accuracy_tolerance=0.005)
    with pytest.raises(ValueError, match="accuracy_tolerance=0.005 judges held-out accuracy"):
        TNEN(holdout_fraction=0)
    with pytest.raises(ValueError, match="accuracy_tolerance=0.005 and refine_epochs=2 judge"):
        TNEN(holdout_fraction=0, refine_epochs=2)
    assert TNEN(holdout_fraction=0, accuracy_tolerance=None, refine_epochs=0).recipe == (
        DEFAULT.replace(holdout_fraction=0))
    assert TNEN(preset="paper", accuracy_tolerance=0.0, holdout_fraction=0.2).recipe == (
        RECIPES["paper"].replace(holdout_fraction=0.2))


def test_default_task_networks_get_independents_recipe():
    """TN+EN's TNs and ``independent``'s networks (the bound TN+EN compresses) are trained
    with one recipe, the shared default, and hold out alike; so do overrides."""
    task = stream("clbench/SplitMNIST5k-v0", n_tasks=1)[0].for_agent()
    unforced = {key: value for key, value in FAST.items() if key != "epochs"}
    for overrides in ({}, {"lr": 0.05, "epochs": 3}):
        agent = TNEN(**unforced, **overrides)
        bound = load_agent_class("independent")(device="cpu", **overrides)
        for learner in (agent, bound):
            torch.manual_seed(0)
            learner.learn(task)
        assert agent.metrics()["recipe"] == bound.metrics()["recipe"] == (
            DEFAULT.replace(**overrides).as_dict())
        assert (len(agent.last_training.holdout_index)
                == len(bound.last_training.holdout_index) == round(0.1 * len(task.y_train)))
        assert agent.metrics()["epochs_trained"] == agent.last_training.epochs <= (
            DEFAULT.replace(**overrides).epochs)


# ---------------------------------------------------------------- the agent
def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="preset='fast'"):
        TNEN(preset="fast")
    with pytest.raises(TypeError, match="unknown TNEN setting.*latent_dim"):
        TNEN(latent_dim=3)
    with pytest.raises(ValueError, match="latent_bits=5"):
        TNEN(latent_bits=5)
    with pytest.raises(ValueError, match="en_dtype='int2'"):
        TNEN(en_dtype="int2")
    with pytest.raises(ValueError, match="task 1 arrived"):
        TNEN(architecture=["reference"], **FAST)._architecture_for(1)


def test_offline_stream_end_to_end_through_state_round_trips():
    tasks = stream("clbench/SplitMNIST5k-v0", n_tasks=3)
    agent, sizes = TNEN(**FAST), []
    for task in tasks:
        agent.learn(task.for_agent())
        figures = agent.metrics()
        json.dumps(figures)  # plain JSON
        assert len(figures["skills"]) == task.id + 1
        assert figures["en_iterations"] <= FAST["en_max_steps"]
        before = [agent.predict(t.x_test, t.id) for t in tasks[: task.id + 1]]
        agent, size = round_trip(agent, **FAST)
        sizes.append(size)
        after = [agent.predict(t.x_test, t.id) for t in tasks[: task.id + 1]]
        assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert min(accuracy_on(agent, task) for task in tasks) > 0.8
    # the EN is paid once; each skill adds its latents (134 chunks x 32 4-bit codes) + metadata
    growth = [later - earlier for earlier, later in pairwise(sizes)]
    assert all(abs(step - 134 * 32 // 2) < 200 for step in growth)  # zip entries align to 64 B
    assert sizes[-1] < 3 * 21_432 * 4


def test_learning_is_replayable_from_torch_seed():
    """Without ``seed`` the agent draws one from torch's generator (which the harness seeds
    per task), so the harness's FLOP twin and fresh-process check replay it exactly."""
    task = stream("clbench/SplitMNIST5k-v0", n_tasks=1)[0].for_agent()
    unseeded = {key: value for key, value in FAST.items() if key != "seed"}
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        agent = TNEN(**unseeded)
        agent.learn(task)
        states.append(agent.state_dict())
    assert states[0]["base_seed"] == states[1]["base_seed"] is not None
    assert torch.equal(states[0]["latents"], states[1]["latents"])
    assert all(torch.equal(states[0]["en"][k], states[1]["en"][k]) for k in states[0]["en"])


def test_checked_reconstruction_is_the_stored_one():
    """The held-out accuracy checked during consolidation is what a reloaded agent gets."""
    task = stream("clbench/SplitMNIST5k-v0", n_tasks=1)[0].for_agent()
    agent = TNEN(**FAST)
    agent.learn(task)
    reported = agent.metrics()["skills"][0]["stored_held_out_accuracy"]
    held = agent.last_training.holdout_index  # the part the recipe held out of training
    assert len(held) == round(0.1 * len(task.y_train))
    agent, _ = round_trip(agent, **FAST)
    assert (agent.predict(task.x_train[held], 0) == task.y_train[held]).double().mean().item(
        ) == reported


def test_warm_start_begins_from_the_recalled_skill():
    """The same task again: with ``warm_start`` the new TN starts from the recalled skill
    (already right on most of the task), without it from the shared seeded base."""
    task = stream("clbench/SplitMNIST5k-v0", n_tasks=1)[0]
    again = Task(1, task.spec, task.x_train, task.y_train)
    for warm_start in (False, True):
        agent = TNEN(warm_start=warm_start, **FAST)
        agent.learn(task.for_agent())
        agent.recipe = agent.recipe.replace(epochs=0)  # the TN as training would start it
        start, _ = agent.task_network(again)
        expected = agent._network(0) if warm_start else agent._unseen_network(1, (1, 28, 28))
        assert torch.equal(flatten_parameters(start), flatten_parameters(expected))
        starts_right = accuracy(start, task.x_test, task.y_test, task.dataset) > 0.8
        assert starts_right == warm_start


def test_mixed_architectures_share_one_encoding_network():
    tasks = stream("clbench/SplitMNIST5k-v0", n_tasks=2)
    settings_ = {**FAST, "architecture": {1: "mlp:16"}}
    agent = TNEN(**settings_)
    for task in tasks:
        agent.learn(task.for_agent())
        agent, _ = round_trip(agent, **settings_)
    assert [s["architecture"] for s in agent.skills] == ["reference", "mlp:16"]
    mlp_size = count_parameters(build_task_network("mlp:16", (1, 28, 28)))
    assert [s["n_chunks"] for s in agent.skills] == [-(-21_432 // 160), -(-mlp_size // 160)]
    assert min(accuracy_on(agent, task) for task in tasks) > 0.8


def test_paper_preset_at_tiny_size():
    """The authors' recipe (raw weights, fp32, full-batch steps, cosine stop), shrunk."""
    tiny = {"chunk_size": 2_000, "hidden_sizes": [16], "latent_size": 4, "en_max_steps": 20,
            "en_check_every": 10}
    tasks = stream("clbench/SplitMNIST5k-v0", n_tasks=2)
    agent = TNEN(preset="paper", **tiny)
    for task in tasks:
        agent.learn(task.for_agent())
        agent, _ = round_trip(agent, preset="paper", **tiny)
    state = agent.state_dict()
    assert state["latents"].dtype == torch.float32 and state["latents"].shape == (22, 4)
    assert all(v.dtype == torch.float32 for v in state["en"].values())
    assert agent.metrics() == {}  # figures describe a learn call, not a loaded state


def test_code_refinement_trains_only_the_new_skills_codes():
    """Refining moves the skill's codes on their storage grid toward a lower training loss
    and leaves the EN (hence every other skill) untouched."""
    task = stream("clbench/SplitMNIST5k-v0", n_tasks=1)[0].for_agent()
    agent = TNEN(**FAST, refine_epochs=2)
    agent.learn(task)
    skill, codes = agent.skills[0], agent.latents.clone()
    en_before = [p.detach().clone() for p in agent.en.parameters()]

    def training_loss(latents):
        net = agent.network_from(skill, agent.en.decode(latents))
        with torch.no_grad():
            x = normalize(task.x_train, task.dataset)
            return torch.nn.functional.cross_entropy(net(x), task.y_train).item()

    net = build_task_network(skill["architecture"], task.input_shape)
    refined = refine_codes(agent.en, agent.config, net,
                           lambda chunks: agent._weights_of(skill, chunks), codes,
                           task.x_train, task.y_train, task.dataset, agent.recipe.batch_size,
                           torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(en_before, agent.en.parameters(),
                                                  strict=True))
    assert all(p.requires_grad for p in agent.en.parameters())
    assert torch.equal(quantize_latents(refined, agent.config["latent_bits"]), refined)
    assert not torch.equal(refined, codes)
    assert training_loss(refined) < training_loss(codes)


def _consolidate_one(accuracies, **settings):
    """Consolidate one random new skill whose held-out accuracy reads ``accuracies`` in turn
    (the last one from then on) against a TN's 0.99; weights always pass (min_cosine -1), so
    only the accuracy decides. Returns the report."""
    config = {**PRESETS["default"], "chunk_size": 16, "latent_size": 4, "en_max_steps": 200,
              "en_check_every": 5, "min_cosine": -1.0, "max_relative_error": None, **settings}
    torch.manual_seed(0)
    en = ContractiveAutoencoder.from_config(config)
    reads = iter(accuracies)
    last = [accuracies[-1]]

    def held_out_accuracy(_chunks):
        return next(reads, last[0])

    skill = Candidate(torch.randn(3, 16), 0.99, held_out_accuracy, None)
    codes, report = consolidate(en, config, torch.zeros(0, 16), None, [], [skill],
                                torch.Generator().manual_seed(0))
    assert codes.shape == (3, 4)
    return report


def test_en_training_stops_when_progress_stalls():
    """An accuracy that never improves: with en_patience=3, the first check sets the best
    and three checks without progress end training (3 x 5 iterations); without patience it
    runs to en_max_steps. Either way the rule is reported not met."""
    stalled = _consolidate_one([0.5], en_patience=3)
    assert (stalled["en_iterations"], stalled["en_stalled"]) == (15, True)
    capped = _consolidate_one([0.5], en_patience=None)
    assert (capped["en_iterations"], capped["en_stalled"]) == (200, False)
    assert not stalled["stopping_rule_met"] and not capped["stopping_rule_met"]


def test_progress_restarts_the_patience_and_meeting_the_rule_ends_training():
    """Shortfall shrinking by more than 1% at each of 8 checks, then flat: training runs those
    8 checks and then 3 flat ones; a change under 1% of the shortfall is no progress; an
    accuracy that reaches the TN's (minus the tolerance) ends training with the rule met."""
    rising = [0.5 + 0.02 * i for i in range(8)]
    assert _consolidate_one(rising, en_patience=3)["en_iterations"] == (7 + 3) * 5
    creeping = [0.5 + 0.0001 * i for i in range(20)]
    assert _consolidate_one(creeping, en_patience=3)["en_iterations"] == 15
    met = _consolidate_one([0.5, 0.6, 0.99], en_patience=1)
    assert (met["en_iterations"], met["stopping_rule_met"], met["en_stalled"]) == (10, True,
                                                                                  False)


@pytest.mark.parametrize("patience", [0, -1, 2.5, True, "10"])
def test_bad_patience_is_named(patience):
    with pytest.raises(ValueError, match=f"en_patience={patience!r}"):
        TNEN(en_patience=patience)


def test_mnist_and_cifar_skills_share_one_encoding_network(fake_full_data):
    """The MNIST + CIFAR-10 stream (small files in the real formats) through the harness:
    five 21,432-parameter skills and one 61,326-parameter CIFAR skill in one EN."""
    result = clbench.evaluate("tnen", "clbench/MixedMNISTCIFAR10-v0", device="cpu",
                              agent_kwargs=FAST, env_kwargs={"data_root": str(fake_full_data)},
                              flops=False)
    assert result.status == "complete"
    assert [m["tn_parameters"] for m in result.agent_metrics] == [21_432] * 5 + [61_326]
    skills = result.agent_metrics[-1]["skills"]
    assert len(skills) == 6 and all(s["architecture"] == "reference" for s in skills)
    # the CIFAR skill adds its latents: 384 chunks of 160 numbers, 32 4-bit codes each
    growth = result.storage["bytes"][-1] - result.storage["bytes"][-2]
    assert abs(growth - 384 * 32 // 2) < 200



def test_harness_run_reproduces_every_learn_in_sealed_workers():
    """What a user runs: every call in a fresh worker from TN+EN's state; the FLOP-counted
    replay of each learn reproduces its state bitwise."""
    result = clbench.evaluate("tnen", "clbench/SplitMNIST5k-v0", device="cpu",
                              agent_kwargs=FAST,
                              env_kwargs={"n_tasks": 2, "max_train_per_task": 200,
                                          "max_test_per_task": 100})
    assert result.status == "complete"
    assert result.reproducible == [True, True]
    assert all(flops > 0 for flops in result.costs["learn_flops"])
