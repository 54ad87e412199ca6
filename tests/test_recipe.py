"""The shared training recipe: its rule for early stopping, its hooks, and that every agent
that trains a task network uses it and reports it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbench.agent import load_agent_class
from clbench.recipe import DEFAULT, FIELDS, Recipe, holdout_score, stratified_holdout, train
from clbench.tasks import materialize, split

# TN+EN's task networks: tests/test_tnen.py::test_default_task_networks_get_independents_recipe
TRAINING_AGENTS = ("naive", "independent", "joint", "ewc", "online_ewc", "si", "lwf", "agem",
                   "replay", "pnn", "linear")


def blobs(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian clouds in 4-d, labels 0/1 (70 / 50)."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) >= 0.58 * n).long()
    inputs = torch.randn(n, 4, generator=generator) + 2.0 * labels[:, None]
    return inputs, labels


def test_recipe_refuses_bad_values_by_name():
    for field, value in (("lr", 0.0), ("momentum", 1.0), ("batch_size", 0), ("epochs", -1),
                         ("holdout_fraction", 1.0), ("patience", 0), ("epochs", 2.5)):
        with pytest.raises(ValueError, match=f"{field}="):
            DEFAULT.replace(**{field: value})
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        DEFAULT.replace(optimizer="rmsprop")
    with pytest.raises(TypeError, match="learning_rate"):
        DEFAULT.replace(learning_rate=0.1)


def test_replace_keeps_the_default_where_an_override_is_none():
    assert DEFAULT.replace(lr=None, epochs=3) == Recipe(**{**DEFAULT.as_dict(), "epochs": 3})
    assert tuple(DEFAULT.as_dict()) == FIELDS


def test_holdout_is_class_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 60 + [1] * 40)
    kept, held = stratified_holdout(labels, 0.1, torch.Generator().manual_seed(3))
    assert torch.bincount(labels[held]).tolist() == [6, 4]
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))
    again = stratified_holdout(labels, 0.1, torch.Generator().manual_seed(3))[1]
    other = stratified_holdout(labels, 0.1, torch.Generator().manual_seed(4))[1]
    assert torch.equal(held, again) and not torch.equal(held, other)
    # a class of one example is never held out entirely; a class of two gives one
    tiny = stratified_holdout(torch.tensor([0, 1, 1]), 0.1)[1].tolist()
    assert tiny in ([1], [2])


def test_without_holdout_every_example_is_trained_for_exactly_the_epochs():
    inputs, labels = blobs()
    model = nn.Linear(4, 2)
    seen, steps = [], []
    recipe = DEFAULT.replace(holdout_fraction=0.0, epochs=3, batch_size=32)

    def loss(x, y):
        seen.append(len(y))
        return F.cross_entropy(model(x), y)

    log = train(model, model.parameters(), inputs, labels, recipe, loss=loss,
                before_step=lambda: steps.append("before"),
                after_step=lambda: steps.append("after"))
    assert (log.epochs, log.steps, log.best_epoch, log.holdout_accuracy) == (3, 12, 3, None)
    assert sum(seen) == 3 * 120 and len(log.holdout_index) == 0
    assert steps == ["before", "after"] * 12


def test_before_step_sees_the_gradient_and_can_change_the_step():
    inputs, labels = blobs()
    model = nn.Linear(4, 2)
    start = [p.detach().clone() for p in model.parameters()]

    def cancel() -> None:  # a hook that zeroes every gradient: SGD then never moves
        for p in model.parameters():
            assert p.grad is not None
            p.grad.zero_()

    train(model, model.parameters(), inputs, labels,
          DEFAULT.replace(holdout_fraction=0.0, epochs=2, momentum=0.0), before_step=cancel)
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    inputs, labels = blobs(200)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    snapshots = []
    recipe = DEFAULT.replace(holdout_fraction=0.25, patience=2, epochs=30, lr=0.5,
                             momentum=0.9)
    # an adversary: after every epoch's last step, push the weights far off, so that
    # held-out accuracy gets worse the longer training goes
    per_epoch = math.ceil(150 / recipe.batch_size)
    count = [0]

    def sabotage() -> None:
        count[0] += 1
        if count[0] % per_epoch == 0:
            with torch.no_grad():
                model.weight.add_(torch.randn_like(model.weight) * count[0])
            snapshots.append([p.detach().clone() for p in model.parameters()])

    log = train(model, model.parameters(), inputs, labels, recipe, after_step=sabotage,
                generator=torch.Generator().manual_seed(0))
    assert log.epochs < recipe.epochs and log.epochs - log.best_epoch == recipe.patience
    assert len(log.holdout_index) == 50 and len(log.train_index) == 150
    kept = snapshots[log.best_epoch - 1]
    assert all(torch.equal(p, k) for p, k in zip(model.parameters(), kept, strict=True))
    assert holdout_score(model, inputs[log.holdout_index], labels[log.holdout_index],
                         None)[0] == log.holdout_accuracy


def test_adam_trains_too():
    inputs, labels = blobs()
    model = nn.Linear(4, 2)
    log = train(model, model.parameters(), inputs, labels,
                DEFAULT.replace(optimizer="adam", lr=0.05, epochs=10))
    assert log.holdout_accuracy >= 0.8


@pytest.mark.parametrize("name", TRAINING_AGENTS)
def test_every_training_agent_uses_and_reports_the_shared_recipe(name):
    """An override given as an agent argument reaches the training loop (the epochs run and
    the examples held out show it) and the resolved recipe is in ``metrics()``."""
    task = materialize(split("mnist5k", 1)[0], 0, seed=0, max_train=60, max_test=20).for_agent()
    cls = load_agent_class(name)
    torch.manual_seed(0)
    agent = cls(device="cpu", epochs=2, holdout_fraction=0.2, patience=5, lr=0.01)
    agent.learn(task)
    figures = agent.metrics()
    assert figures["recipe"] == {**DEFAULT.as_dict(), "epochs": 2, "holdout_fraction": 0.2,
                                 "patience": 5, "lr": 0.01}
    assert figures["epochs_trained"] == 2 and 1 <= figures["best_epoch"] <= 2
    assert figures["holdout_accuracy"] is not None
    assert len(agent.last_training.holdout_index) == 12
    with pytest.raises(TypeError, match="learning_rate"):
        cls(device="cpu", learning_rate=0.1)


def test_a_lower_held_out_loss_at_equal_accuracy_counts_as_improving():
    """A net whose held-out accuracy is flat (here: already perfect) while its held-out loss
    falls keeps training; a patience on accuracy alone would stop it after a few epochs."""
    labels = torch.tensor([0, 1] * 40)
    inputs = torch.zeros(80, 4)
    inputs[:, 0] = 2.0 * labels - 1.0  # separable on the first coordinate
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[1, 0] = 0.1  # right on every example, not yet confident
    recipe = DEFAULT.replace(holdout_fraction=0.25, patience=2, epochs=8, lr=0.1)
    log = train(model, model.parameters(), inputs, labels, recipe)
    assert log.holdout_accuracy == 1.0
    assert log.epochs == 8 and log.best_epoch == 8
