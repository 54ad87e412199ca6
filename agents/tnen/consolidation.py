"""Consolidation (PAPER.md, "Adding skill k+1"): retrain the EN on the recalled skills plus the
new ones until every reconstruction meets the stopping rule, then store the new latents.

One function, :func:`consolidate`, serves the agent (one new skill per task) and the
paper's batch and splitting experiments (many new skills at once, no recalled ones). It
holds every part of EN training:

- **iterations**: with ``adam_step_per_skill`` (the authors' code) one iteration is one Adam
  step per stored skill, on that skill's chunks; otherwise one step on the new chunks (a
  random ``replay_chunks`` of them where there are more) plus ``replay_chunks`` recalled
  ones, so a step's cost stops growing with the skills stored;
- **the loss** (:func:`step_loss`): squared reconstruction error per chunk, the
  contractive penalty times ``contractive_weight``, rounding noise of the latent grid
  (``latent_noise``), and with ``keep_codes`` a recall term that keeps old codes decoding to
  their recall (``recall_weight``);
- **the stopping rule**, checked every ``en_check_every`` iterations on what would be
  stored (EN rounded to ``en_dtype``, latents to their grid): every new skill against its
  TN (cosine >= ``min_cosine``, relative error <= ``max_relative_error``, held-out accuracy
  within ``accuracy_tolerance``), and, once they pass, every recalled skill against its
  recall (cosine, drift <= ``max_recall_drift``); at most ``en_max_steps`` iterations, and
  with ``en_patience`` training also ends when progress stalls: when that many checks in a
  row brought the rule's shortfall (:func:`shortfall`) no closer to being met. Either way
  what is stored is the check's state, and the report says the rule was not met;
- **code refinement**: a new skill close in weights but short in held-out accuracy has
  its codes trained on its task through the fixed decoder (``refine_epochs``; the caller
  supplies how), at most ``max_refinements`` times;
- **kept codes**: with ``keep_codes`` a recalled chunk keeps its code unless re-encoding
  reconstructs it better, so consolidation adds no rounding noise to old skills.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from agents.tnen.chunks import cosine_and_error, grid_levels, quantize_latents
from agents.tnen.encoder import ContractiveAutoencoder
from clbench.quantize import round_to_storage
from clbench.training import minibatches


class Candidate(NamedTuple):
    """A skill being stored: its target chunks and how to judge a reconstruction of it."""

    chunks: torch.Tensor                                   # (its chunks, chunk_size)
    tn_accuracy: float | None                              # its TN's held-out accuracy
    held_out_accuracy: Callable[[torch.Tensor], float | None]  # of reconstructed chunks
    refine: Callable[[torch.Tensor], torch.Tensor] | None  # codes -> refined codes


class Fit(NamedTuple):
    """A new skill's stored form at a check: codes, reconstruction and how close they are."""

    codes: torch.Tensor
    recon: torch.Tensor
    cosine: float
    relative_error: float
    accuracy: float | None


# A check's observer: (iteration, EN training seconds so far, the new skills' fits).
CheckCallback = Callable[[int, float, list[Fit]], None]


def weights_ok(cosine: float, error: float, config: dict[str, Any]) -> bool:
    """The weight-space part of the stopping rule for a new skill."""
    limit = config["max_relative_error"]
    return cosine >= config["min_cosine"] and (limit is None or error <= limit)


def accuracy_ok(accuracy: float | None, tn_accuracy: float | None,
                config: dict[str, Any]) -> bool:
    """The accuracy part: held-out accuracy within ``accuracy_tolerance`` of the TN's."""
    tolerance = config["accuracy_tolerance"]
    return tolerance is None or accuracy is None or tn_accuracy is None or (
        accuracy >= tn_accuracy - tolerance)


def recalled_ok(cosine: torch.Tensor, error: torch.Tensor, config: dict[str, Any]) -> bool:
    """The stopping rule for recalled skills (against their recall)."""
    if len(cosine) == 0:
        return True
    drift = config["max_recall_drift"]
    return cosine.min().item() >= config["min_cosine"] and (
        drift is None or error.max().item() <= drift)


# A shortfall improves when it falls below this fraction of the best one so far: smaller
# changes are noise of the check (a held-out accuracy moves by whole examples).
PROGRESS = 0.99


def shortfall(cosine: float, error: float, accuracy: float | None, tn_accuracy: float | None,
              config: dict[str, Any], drift_limit: float | None) -> float:
    """How far one skill is from the stopping rule: 0 where it passes, else the sum of its
    gaps (cosine below ``min_cosine``, error above ``drift_limit``, held-out accuracy below
    its TN's minus ``accuracy_tolerance``), each in its own unit, which is a fraction."""
    gap = max(0.0, config["min_cosine"] - cosine)
    if drift_limit is not None:
        gap += max(0.0, error - drift_limit)
    tolerance = config["accuracy_tolerance"]
    if None not in (tolerance, accuracy, tn_accuracy):
        gap += max(0.0, tn_accuracy - tolerance - accuracy)
    return gap


class Progress:
    """The stall detector of ``en_patience``: counts checks since either shortfall (the new
    skills', the recalled skills') last fell below :data:`PROGRESS` of its best."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = {"new": float("inf"), "recalled": float("inf")}
        self.checks_without = 0

    def improved(self, part: str, value: float) -> bool:
        better = value < PROGRESS * self.best[part] or self.best[part] == float("inf")
        self.best[part] = min(self.best[part], value)
        return better

    def stalled(self, improved: bool) -> bool:
        """Count one check; whether ``patience`` checks in a row brought no progress."""
        self.checks_without = 0 if improved else self.checks_without + 1
        return self.patience is not None and self.checks_without >= self.patience


def step_loss(en: ContractiveAutoencoder, config: dict[str, Any], new: torch.Tensor,
              old: torch.Tensor, old_codes: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of one Adam step on ``new`` target chunks and ``old`` recalled ones.

    Each group's mean squared error per chunk counts once (the new skill weighs as much as
    the recalled ones, however few its chunks); the penalty is averaged over every chunk.
    """
    batch = torch.cat([new, old])
    latents, penalty = en.encode_with_penalty(batch)
    levels = grid_levels(config["latent_bits"])
    if levels and config["latent_noise"]:  # rounding to the storage grid, as uniform noise
        latents = latents + (torch.rand_like(latents) - 0.5) / levels
    errors = (en.decode(latents) - batch).pow(2).sum(1)
    loss = config["contractive_weight"] * penalty.mean()
    for part in (errors[: len(new)], errors[len(new):]):
        if len(part):
            loss = loss + part.mean()
    if config["keep_codes"] and old_codes is not None and len(old):
        drift = (en.decode(old_codes) - old).pow(2).sum(1).mean()
        loss = loss + config["recall_weight"] * drift
    return loss


def _sample(n: int, size: int | None, generator: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """All of ``range(n)``, or ``size`` random picks from it."""
    if size is None or size >= n:
        return torch.arange(n, device=device)
    return torch.randint(n, (size,), generator=generator).to(device)


def iteration_batches(config: dict[str, Any], new_rows: list[range], old_rows: list[range],
                      generator: torch.Generator,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(new row indices, old row indices) of every Adam step of one EN iteration."""
    n_new = sum(len(rows) for rows in new_rows)
    n_old = sum(len(rows) for rows in old_rows)
    none = torch.zeros(0, dtype=torch.long, device=device)
    if config["adam_step_per_skill"]:
        for rows in old_rows:
            yield none, torch.arange(rows.start, rows.stop, device=device)
        for rows in new_rows:
            yield torch.arange(rows.start, rows.stop, device=device), none
        return
    replay = config["replay_chunks"]
    yield _sample(n_new, replay, generator, device), _sample(n_old, replay, generator, device)


@torch.no_grad()
def _encode_old(en: ContractiveAutoencoder, recalled: torch.Tensor, old_codes: torch.Tensor,
                config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, reconstructions) of the recalled chunks; with ``keep_codes`` a chunk keeps
    its code where that still reconstructs it at least as well as re-encoding."""
    codes = quantize_latents(en.encode(recalled), config["latent_bits"])
    recon = en.decode(codes)
    if config["keep_codes"] and len(recalled):
        kept = en.decode(old_codes)
        better = (kept - recalled).pow(2).sum(1) <= (recon - recalled).pow(2).sum(1)
        codes[better], recon[better] = old_codes[better], kept[better]
    return codes, recon


@torch.no_grad()
def _fit(en: ContractiveAutoencoder, candidate: Candidate, codes: torch.Tensor) -> Fit:
    recon = en.decode(codes)
    owner = torch.zeros(len(codes), dtype=torch.long, device=codes.device)
    cosine, error = cosine_and_error(recon, candidate.chunks, owner, 1)
    return Fit(codes, recon, cosine.item(), error.item(), candidate.held_out_accuracy(recon))


def _check_new(en: ContractiveAutoencoder, candidate: Candidate, config: dict[str, Any],
               may_refine: bool) -> tuple[Fit, bool]:
    """The new skill's fit (refined where the rule allows it); whether it refined."""
    with torch.no_grad():
        fit = _fit(en, candidate, quantize_latents(en.encode(candidate.chunks),
                                                   config["latent_bits"]))
    if not (may_refine and candidate.refine is not None
            and weights_ok(fit.cosine, fit.relative_error, config)
            and not accuracy_ok(fit.accuracy, candidate.tn_accuracy, config)):
        return fit, False
    refined = _fit(en, candidate, candidate.refine(fit.codes))
    if (refined.accuracy is not None and fit.accuracy is not None
            and refined.accuracy > fit.accuracy
            and weights_ok(refined.cosine, refined.relative_error, config)):
        return refined, True
    return fit, True


def _full_check(en: ContractiveAutoencoder, recalled: torch.Tensor,
                old_codes: torch.Tensor | None, fits: list[Fit], targets: torch.Tensor,
                owner: torch.Tensor, n_skills: int, config: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every chunk's code as it would be stored (recalled then new), and every skill's
    cosine and relative error against its target."""
    codes, recon = _encode_old(en, recalled, old_codes, config)
    codes = torch.cat([codes, *(f.codes for f in fits)])
    recon = torch.cat([recon, *(f.recon for f in fits)])
    cosine, error = cosine_and_error(recon, targets, owner, n_skills)
    return codes, cosine, error


def _rows(sizes: list[int], start: int = 0) -> list[range]:
    rows = []
    for size in sizes:
        rows.append(range(start, start + size))
        start += size
    return rows


def consolidate(en: ContractiveAutoencoder, config: dict[str, Any], recalled: torch.Tensor,
                old_codes: torch.Tensor | None, old_sizes: list[int], new: list[Candidate],
                generator: torch.Generator,
                on_check: CheckCallback | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Train ``en`` on ``recalled`` chunks (``old_sizes`` chunks per stored skill, coded as
    ``old_codes``) plus the ``new`` skills until the stopping rule holds or ``en_max_steps``
    iterations pass. Returns (every chunk's code, old then new; a report of the effort and
    every skill's cosine and relative error)."""
    device = recalled.device
    n_old = len(recalled)
    old_rows = _rows(old_sizes)
    new_rows = _rows([len(c.chunks) for c in new])
    new_targets = torch.cat([c.chunks for c in new])
    targets = torch.cat([recalled, new_targets])
    n_skills = len(old_rows) + len(new_rows)
    owner = torch.cat([torch.full((len(rows),), i, dtype=torch.long) for i, rows in
                       enumerate([*old_rows, *new_rows])]).to(device)
    optimizer = torch.optim.Adam(en.parameters(), lr=config["en_lr"])
    refinements = [0] * len(new)
    steps, adam_steps, full_checks, met, seconds = 0, 0, 0, False, 0.0
    progress = Progress(config["en_patience"])
    while True:
        last = steps == config["en_max_steps"]
        if steps % config["en_check_every"] == 0 or last:
            # check what would be stored: the EN rounded to its storage dtype (training
            # goes on from the unrounded weights, so small steps are not rounded away)
            master = parameters_to_vector(en.parameters()).detach().clone()
            round_to_storage(en, config["en_dtype"])
            fits = []
            for index, candidate in enumerate(new):
                fit, refined = _check_new(en, candidate, config,
                                          refinements[index] < config["max_refinements"])
                refinements[index] += refined
                fits.append(fit)
            if on_check is not None:
                on_check(steps, seconds, fits)
            new_ok = all(weights_ok(f.cosine, f.relative_error, config)
                         and accuracy_ok(f.accuracy, c.tn_accuracy, config)
                         for f, c in zip(fits, new, strict=True))
            improved = progress.improved("new", sum(
                shortfall(f.cosine, f.relative_error, f.accuracy, c.tn_accuracy, config,
                          config["max_relative_error"]) for f, c in zip(fits, new, strict=True)))
            full = new_ok or last
            if full:
                full_checks += 1
                codes, cosine, error = _full_check(en, recalled, old_codes, fits, targets,
                                                   owner, n_skills, config)
                old_cosine, old_error = cosine[: len(old_rows)], error[: len(old_rows)]
                met = new_ok and recalled_ok(old_cosine, old_error, config)
                if len(old_rows):
                    improved |= progress.improved("recalled", shortfall(
                        old_cosine.min().item(), old_error.max().item(), None, None, config,
                        config["max_recall_drift"]))
            stalled = progress.stalled(improved) and not (met or last)
            if stalled and not full:
                full_checks += 1
                codes, cosine, error = _full_check(en, recalled, old_codes, fits, targets,
                                                   owner, n_skills, config)
            if met or last or stalled:
                break
            vector_to_parameters(master, en.parameters())
        start = time.perf_counter()
        for new_index, old_index in iteration_batches(config, new_rows, old_rows, generator,
                                                      device):
            loss = step_loss(en, config, new_targets[new_index], recalled[old_index],
                             None if old_codes is None else old_codes[old_index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            adam_steps += 1
        seconds += time.perf_counter() - start
        steps += 1
    old = slice(0, len(old_rows))
    return codes, {
        "en_iterations": steps,
        "en_backprop_calls": adam_steps,
        "en_seconds": seconds,
        "en_full_checks": full_checks,
        "code_refinements": sum(refinements),
        "stopping_rule_met": bool(met),
        "en_stalled": bool(stalled),
        "new_accuracies": [f.accuracy for f in fits],
        "max_recall_drift": error[old].max().item() if n_old else 0.0,
        "mean_recall_drift": error[old].mean().item() if n_old else 0.0,
        "cosines": cosine.tolist(),
        "relative_errors": error.tolist(),
    }


def refine_codes(en: ContractiveAutoencoder, config: dict[str, Any], net: torch.nn.Module,
                 weights_of: Callable[[torch.Tensor], torch.Tensor], codes: torch.Tensor,
                 images: torch.Tensor, labels: torch.Tensor, dataset: str, batch_size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """A new skill's codes after ``refine_epochs`` of Adam (minibatches of ``batch_size``,
    the TN recipe's) on its task's training data, through the EN's decoder (held fixed: no
    other skill moves) and its TN ``net``, whose parameter vector ``weights_of`` builds from
    decoded chunks.

    Weight-space closeness (cosine, relative error) does not say which errors hurt the
    task; this trains the reconstruction on the task itself. Rounding to the latent grid
    is straight-through, so what is trained is what is stored.
    """
    net.train()
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]
    latent = codes.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=config["refine_lr"])
    bits = config["latent_bits"]
    en.requires_grad_(False)
    try:
        for _ in range(config["refine_epochs"]):
            for x, y in minibatches(images, labels, dataset, batch_size, generator):
                stored = latent + (quantize_latents(latent, bits) - latent).detach()
                vector = weights_of(en.decode(stored))
                parameters = {name: part.view(size) for name, part, size in
                              zip(names, vector.split(sizes), shapes, strict=True)}
                loss = F.cross_entropy(torch.func.functional_call(net, parameters, (x,)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        en.requires_grad_(True)
    return quantize_latents(latent.detach(), bits)
