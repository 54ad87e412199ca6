"""Encoding many trained networks *at once* with one EN: the paper's batch setting.

The reference agent (``agents/tnen.py``) adds skills one at a time; the paper's batch and
splitting experiments instead train every task network (TN) first and then one EN on all
of them together, watching the accuracy of the reconstructed networks as the EN trains.
This module does that with the agent's own parts (TN training, chunking, the contractive
autoencoder, latent quantisation) and a preset's settings:

- a TN per task, trained as ``TNEN.learn`` trains it (same initialisation rule, optimiser,
  held-out split and stopping threshold), stored as (weights - base) / scale in chunks;
- one EN on every chunk; one iteration = one Adam step with the loss of ``TNEN`` (squared
  error + contractive penalty, latent rounding noise if the preset trains with it) on as
  many chunks as the agent's steps take: all of them where the preset sets
  ``replay_chunks=None`` (the paper preset: full-batch steps), else a random batch of
  ``replay_chunks`` (the default preset);
- every ``en_check_every`` iterations, the networks are rebuilt from their *stored* form
  (EN weights in the storage dtype, latents on their grid) and tested; training stops once
  the preset's stopping rule holds for every skill (minimum cosine, maximum relative error,
  held-out accuracy within the tolerance of the TN's), or at ``en_max_steps``.

Bytes are those of the serialised EN weights and packed latents (what ``TNEN`` stores,
less a few bytes of per-skill metadata); FLOPs are counted once per iteration shape with
PyTorch's FLOP counter (forward and backward) and multiplied by the iterations run.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agents.tnen import (
    ContractiveAutoencoder,
    accuracy,
    build_task_network,
    flatten_parameters,
    from_chunks,
    grid_levels,
    load_parameters,
    pack_latents,
    quantize_latents,
    seeded_task_network,
    to_chunks,
    train_task_network,
)
from clbench.costs import count_flops
from clbench.nets import count_parameters
from clbench.paper.common import Stopwatch, log
from clbench.quantize import quantize, round_to_storage
from clbench.tasks import Task, TaskSpec, materialize


@dataclass
class Skill:
    """One trained TN, ready to encode: its task, how its vector is stored, its accuracy."""

    task: Task
    architecture: str
    base: torch.Tensor
    scale: float
    chunks: torch.Tensor
    n_parameters: int
    original_accuracy: float  # test accuracy of the TN itself
    held_out: tuple[torch.Tensor, torch.Tensor]
    held_out_accuracy: float
    epochs: int
    steps: int
    seconds: float
    flops: int

    def network(self, chunks: torch.Tensor) -> nn.Module:
        """The TN rebuilt from (reconstructed) chunks."""
        net = build_task_network(self.architecture, self.task.input_shape).to(self.base.device)
        return load_parameters(net, self.base + self.scale * from_chunks(chunks,
                                                                          self.n_parameters))


_FLOPS_PER_EXAMPLE: dict[tuple, int] = {}


def flops_per_example(architecture: str, input_shape) -> int:
    """Forward + backward FLOPs of one training example through a TN (counted once)."""
    key = (architecture, tuple(input_shape))
    if key not in _FLOPS_PER_EXAMPLE:
        net = build_task_network(architecture, input_shape)
        x = torch.zeros(1, *input_shape)
        _FLOPS_PER_EXAMPLE[key] = count_flops(
            lambda: F.cross_entropy(net(x), torch.zeros(1, dtype=torch.long)).backward())
    return _FLOPS_PER_EXAMPLE[key]


def train_skill(spec: TaskSpec, task_id: int, architecture: str, config: dict[str, Any],
                seed: int, settings: dict[str, Any], device: str, data_root) -> Skill:
    """Materialise task ``task_id`` and train its TN the way ``TNEN.learn`` does."""
    task = materialize(spec, task_id, seed, positive_fraction=0.4,
                       max_train=settings["max_train"], max_test=settings["max_test"],
                       root=data_root, device=device)
    shape = tuple(task.input_shape)
    torch.manual_seed(seed * 1_000_003 + task_id)
    net = build_task_network(architecture, shape).to(device)
    base = flatten_parameters(seeded_task_network(architecture, shape, seed)).to(device)
    if config["shared_init"]:
        load_parameters(net, base)
    else:
        base = torch.zeros_like(base)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + task_id)
    watch = Stopwatch()
    with watch:
        trained = train_task_network(net, task, config, generator)
    delta = flatten_parameters(net) - base
    scale = max(delta.pow(2).mean().sqrt().item(), 1e-12) if config["normalize"] else 1.0
    examples = trained.epochs * len(trained.y_train)
    return Skill(
        task=task, architecture=architecture, base=base, scale=scale,
        chunks=to_chunks(delta / scale, config["chunk_size"]),
        n_parameters=count_parameters(net),
        original_accuracy=accuracy(net, task.x_test, task.y_test, task.dataset),
        held_out=(trained.x_held, trained.y_held),
        held_out_accuracy=trained.held_out_accuracy, epochs=trained.epochs,
        steps=trained.steps, seconds=watch.seconds,
        flops=examples * flops_per_example(architecture, shape))


def rechunk(skill: Skill, chunk_size: int) -> Skill:
    """The same trained skill cut into chunks of another size (for the splitting test)."""
    vector = from_chunks(skill.chunks, skill.n_parameters)
    return dataclasses.replace(skill, chunks=to_chunks(vector, chunk_size))


def stored_bytes(en: ContractiveAutoencoder, codes: torch.Tensor, config: dict) -> int:
    """Bytes of the EN in its storage dtype plus the packed latents, serialised."""
    buffer = io.BytesIO()
    torch.save({"en": quantize(en, config["en_dtype"]),
                "latents": pack_latents(codes, config["latent_bits"])}, buffer)
    return len(buffer.getvalue())


def _loss(en: ContractiveAutoencoder, targets: torch.Tensor, config: dict) -> torch.Tensor:
    latents, penalty = en.encode_with_penalty(targets)
    levels = grid_levels(config["latent_bits"])
    if levels and config["latent_noise"]:  # rounding to the storage grid, as uniform noise
        latents = latents + (torch.rand_like(latents) - 0.5) / levels
    loss = (en.decode(latents) - targets).pow(2).sum(1).mean()
    return loss + config["contractive_weight"] * penalty.mean()


@torch.no_grad()
def _check(en: ContractiveAutoencoder, skills: list[Skill], targets: torch.Tensor,
           config: dict) -> dict[str, Any]:
    """Rebuild every skill from the stored form of the EN and latents; test it."""
    stored = round_to_storage(copy.deepcopy(en), config["en_dtype"])
    codes = quantize_latents(stored.encode(targets), config["latent_bits"])
    recon = stored.decode(codes)
    figures: dict[str, list] = {"accuracy": [], "held_out_accuracy": [], "cosine": [],
                                "relative_error": []}
    start = 0
    for skill in skills:
        rows = slice(start, start + len(skill.chunks))
        start = rows.stop
        got, want = recon[rows].reshape(-1), targets[rows].reshape(-1)
        figures["cosine"].append(F.cosine_similarity(got, want, dim=0).item())
        figures["relative_error"].append(((got - want).norm() / want.norm()).item())
        net = skill.network(recon[rows])
        figures["accuracy"].append(accuracy(net, skill.task.x_test, skill.task.y_test,
                                            skill.task.dataset))
        figures["held_out_accuracy"].append(accuracy(net, *skill.held_out, skill.task.dataset))
    figures["codes"] = codes
    return figures


def rule_met(figures: dict[str, Any], skills: list[Skill], config: dict) -> bool:
    """The preset's stopping rule, applied to every skill (all are new in a batch)."""
    if min(figures["cosine"]) < config["min_cosine"]:
        return False
    if config["max_relative_error"] is not None and (
            max(figures["relative_error"]) > config["max_relative_error"]):
        return False
    tolerance = config["accuracy_tolerance"]
    return tolerance is None or all(
        got >= skill.held_out_accuracy - tolerance
        for got, skill in zip(figures["held_out_accuracy"], skills, strict=True))


def encode_at_once(skills: list[Skill], config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one EN on every skill's chunks together, at most ``en_max_steps`` iterations;
    the history of its checks."""
    max_steps = config["en_max_steps"]
    device = skills[0].base.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        en = ContractiveAutoencoder.from_config(config).to(device)
    targets = torch.cat([skill.chunks for skill in skills])
    optimizer = torch.optim.Adam(en.parameters(), lr=config["en_lr"])
    batch_size = len(targets) if config["replay_chunks"] is None else min(
        len(targets), config["replay_chunks"])
    generator = torch.Generator().manual_seed(seed)
    step_flops = count_flops(lambda: _loss(en, targets[:batch_size], config).backward())
    en.zero_grad(set_to_none=True)
    watch, history, met_at, step = Stopwatch(), [], None, 0
    while True:
        if step % config["en_check_every"] == 0 or step == max_steps:
            figures = _check(en, skills, targets, config)
            codes = figures.pop("codes")
            history.append({"iteration": step, "seconds": watch.seconds,
                            "flops": step * step_flops, **figures})
            log(f"  EN (n = {config['chunk_size']:,}) on {len(skills)} networks, iteration "
                f"{step}: {watch.seconds:.0f} s, mean accuracy "
                f"{sum(figures['accuracy']) / len(skills):.3f}, min cosine "
                f"{min(figures['cosine']):.3f}")
            if rule_met(figures, skills, config):
                met_at = step
                break
            if step == max_steps:
                break
        with watch:
            batch = targets if batch_size == len(targets) else targets[
                torch.randint(len(targets), (batch_size,), generator=generator).to(device)]
            loss = _loss(en, batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        step += 1
    return {
        "n_skills": len(skills), "tasks": [skill.task.name for skill in skills],
        "architectures": sorted({skill.architecture for skill in skills}),
        "tn_parameters": [skill.n_parameters for skill in skills],
        "chunk_size": config["chunk_size"], "n_chunks": len(targets),
        "en_parameters": count_parameters(en), "storage_bytes": stored_bytes(en, codes, config),
        "fp32_networks_bytes": 4 * sum(skill.n_parameters for skill in skills),
        "flops_per_iteration": step_flops, "chunks_per_iteration": batch_size,
        "rule_met_at": met_at, "max_steps": max_steps,
        "original_accuracy": [skill.original_accuracy for skill in skills],
        "tn": {"epochs": [skill.epochs for skill in skills],
               "backprop_calls": [skill.steps for skill in skills],
               "seconds": sum(skill.seconds for skill in skills),
               "flops": sum(skill.flops for skill in skills)},
        "history": history,
    }
