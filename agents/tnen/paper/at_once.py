"""Encoding many trained networks *at once* with one EN: the paper's batch and splitting setting.

The agent adds skills one at a time; these experiments train every task network (TN) first
and then one EN on all of them together, watching the reconstructed networks as the EN
trains. Both halves are the agent's own code: ``TNEN.prepare`` trains each TN exactly as
``learn`` does, and ``TNEN.store`` consolidates them all in one call of
``agents.tnen.consolidation.consolidate`` (same loss, iterations, stopping rule, code
refinement). At every check of the stopping rule, the networks rebuilt from the *stored*
form (EN in its storage dtype, latents on their grid) are scored on each task's test
split (the env's test queries, materialised with ``clbench.tasks.materialize``).

FLOPs: one EN iteration is counted once with PyTorch's FLOP counter on an EN of the same
shape (forward and backward of every Adam step of the iteration) and multiplied by the
iterations run; the TNs' FLOPs are their forward + backward passes over the examples seen.
"""

from __future__ import annotations

import io
import time
from typing import Any

import torch
import torch.nn.functional as F

from agents.tnen import TNEN, ContractiveAutoencoder
from agents.tnen.consolidation import iteration_batches, step_loss
from agents.tnen.paper.common import log
from agents.tnen.task_network import accuracy, build_task_network
from clbench.costs import count_flops
from clbench.nets import count_parameters
from clbench.tasks import Task


def flops_per_example(architecture: str, input_shape) -> int:
    """Forward + backward FLOPs of one training example through a TN."""
    net = build_task_network(architecture, input_shape)
    x = torch.zeros(1, *input_shape)
    return count_flops(
        lambda: F.cross_entropy(net(x), torch.zeros(1, dtype=torch.long)).backward())


def iteration_flops(config: dict[str, Any], chunks_per_skill: list[int]) -> int:
    """FLOPs of one EN iteration storing skills of ``chunks_per_skill`` chunks at once (all
    new), counted on an EN of the preset's shape built on the meta device."""
    with torch.device("meta"):
        en = ContractiveAutoencoder.from_config(config)
        targets = torch.zeros(sum(chunks_per_skill), config["chunk_size"])
    rows, start = [], 0
    for size in chunks_per_skill:
        rows.append(range(start, start + size))
        start += size
    none = targets[:0]

    def one_iteration() -> None:
        for new_index, _ in iteration_batches(config, rows, [], torch.Generator(), "meta"):
            step_loss(en, config, targets[new_index], none).backward()

    return count_flops(one_iteration)


def encode_at_once(agent: TNEN, tasks: list[Task]) -> dict[str, Any]:
    """Train a TN per task (with its test split) and store them all at once in ``agent``'s
    EN; the history of its checks (test accuracy, cosine, relative error per network)."""
    config = agent.config
    start = time.perf_counter()
    pending = [agent.prepare(task.for_agent()) for task in tasks]
    tn_seconds = time.perf_counter() - start
    per_example = {(p.skill["architecture"], tuple(p.task.input_shape)): 0 for p in pending}
    for architecture, shape in per_example:
        per_example[architecture, shape] = flops_per_example(architecture, shape)
    step_flops = iteration_flops(config, [p.skill["n_chunks"] for p in pending])
    history: list[dict[str, Any]] = []

    def on_check(iteration: int, seconds: float, fits) -> None:
        history.append({
            "iteration": iteration, "seconds": seconds, "flops": iteration * step_flops,
            "accuracy": [accuracy(agent.network_from(p.skill, fit.recon), task.x_test,
                                  task.y_test, task.dataset)
                         for p, fit, task in zip(pending, fits, tasks, strict=True)],
            "cosine": [fit.cosine for fit in fits],
            "relative_error": [fit.relative_error for fit in fits]})
        check = history[-1]
        log(f"  EN (n = {config['chunk_size']:,}) on {len(tasks)} networks, iteration "
            f"{iteration}: {seconds:.0f} s, mean accuracy "
            f"{sum(check['accuracy']) / len(tasks):.3f}, min cosine {min(check['cosine']):.3f}")

    agent.store(pending, on_check)
    metrics = agent.metrics()
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    return {
        "n_skills": len(tasks), "tasks": [task.name for task in tasks],
        "architectures": sorted({p.skill["architecture"] for p in pending}),
        "tn_parameters": [count_parameters(p.net) for p in pending],
        "chunk_size": config["chunk_size"], "n_chunks": sum(p.skill["n_chunks"] for p in pending),
        "en_parameters": count_parameters(agent.en), "storage_bytes": buffer.tell(),
        "fp32_networks_bytes": 4 * sum(count_parameters(p.net) for p in pending),
        "flops_per_iteration": step_flops, "adam_steps": metrics["en_backprop_calls"],
        "rule_met": metrics["stopping_rule_met"], "iterations": metrics["en_iterations"],
        "code_refinements": metrics["code_refinements"], "max_steps": config["en_max_steps"],
        "original_accuracy": [accuracy(p.net, task.x_test, task.y_test, task.dataset)
                              for p, task in zip(pending, tasks, strict=True)],
        "n_test": [len(task.y_test) for task in tasks],
        "tn": {"epochs": [p.trained.epochs for p in pending],
               "backprop_calls": [p.trained.steps for p in pending], "seconds": tn_seconds,
               "flops": sum(p.trained.epochs * len(p.trained.train_index)
                            * per_example[p.skill["architecture"], tuple(p.task.input_shape)]
                            for p in pending)},
        "history": history,
    }
