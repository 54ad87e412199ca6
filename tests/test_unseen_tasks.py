"""Every built-in agent completes sealed; with future queries it answers a best guess for
tasks it has not learned, deterministically, and FWT is measured against the untrained
agent, not against 0.5."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import SPLIT, TINY_STREAM, builtin_agents, tiny_kwargs

from clbench.agent import load_agent_class
from clbench.harness import evaluate
from clbench.sealed import sandbox
from clbench.training import dataset_for_unseen_task

FUTURE = {**TINY_STREAM, "query_future": True}


@pytest.mark.parametrize("name", builtin_agents())
def test_every_builtin_agent_completes_sealed_and_answers_unseen_tasks(name,
                                                                     in_shadowing_folder):
    # sealed, learn replayed and checked, from a folder whose agents/ must not shadow ours
    result = evaluate(name, SPLIT, seed=3, device="cpu", agent_kwargs=tiny_kwargs(name),
                      env_kwargs=FUTURE)
    assert result.status == "complete", result.error
    assert result.sealed is sandbox.bwrap_status()[0], result.isolation["reason"]
    assert result.reproducible == [True, True]
    n = len(result.env["task_names"])
    assert [len(row) for row in result.accuracy] == [n] * n  # every row asks about every task
    assert len(result.fwt_baseline) == n
    expected = sum(result.accuracy[j - 1][j] - result.fwt_baseline[j] for j in range(1, n))
    assert result.metrics["fwt"] == pytest.approx(expected / (n - 1))


@pytest.mark.parametrize("name", [*builtin_agents(), "agents.template:TemplateAgent"])
def test_a_guess_is_deterministic_and_leaves_the_global_rng_alone(name):
    cls = load_agent_class(name)
    torch.manual_seed(0)
    agent = cls(device="cpu", **tiny_kwargs(name))
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    before = torch.get_rng_state()
    first = agent.predict(x, 4)
    assert torch.equal(torch.get_rng_state(), before)
    if name != "random":  # random's coin flips come from its own generator, by design
        assert torch.equal(agent.predict(x, 4), first)
    assert first.shape == (16,) and set(first.tolist()) <= {0, 1}


def test_the_fwt_baseline_is_the_untrained_agent_of_the_same_seed():
    # A constant predictor scores its class share before and after learning: FWT exactly 0,
    # where a fixed 0.5 would have credited it with transfer (0.6 - 0.5 on 40/60 tasks).
    result = evaluate("agents_for_tests:ConstantZero", SPLIT, device="cpu", flops=False,
                      env_kwargs={**FUTURE, "positive_fraction": 0.4})
    assert result.fwt_baseline == result.accuracy[0] == result.accuracy[1]
    assert result.fwt_baseline[1] == pytest.approx(0.6)
    assert result.metrics["fwt"] == 0.0


def test_without_future_queries_there_is_no_fwt():
    result = evaluate("naive", SPLIT, device="cpu", agent_kwargs={"epochs": 1}, flops=False,
                      env_kwargs=TINY_STREAM)
    assert result.fwt_baseline is None and result.metrics["fwt"] is None


def test_unseen_task_normalisation_follows_the_stream():
    assert dataset_for_unseen_task((1, 28, 28), ["fashion_mnist", "cifar10"]) == "fashion_mnist"
    assert dataset_for_unseen_task((3, 32, 32), ["mnist5k"]) == "cifar10"
    with pytest.raises(ValueError, match=r"\(2, 2\).*1x28x28"):
        dataset_for_unseen_task((2, 2), [])
