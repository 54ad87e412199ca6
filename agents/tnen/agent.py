"""TN+EN: task networks stored as the latent vectors of one lifelong contractive autoencoder.

The reference agent of clbench, after Mandivarapu, Camp & Estrada (Self-Net, 2020; see
PAPER.md). Learning a skill and storing it are decoupled; each step has its own module:

1. **Task network (TN)**, ``task_network.py``: each new task gets its own network, trained
   by plain backprop on that task alone. The architecture is the reference net for the
   task's input shape or any spec named per task (``"mlp:64"``).
2. **Flatten and chunk**, ``chunks.py``: the TN's parameters become one vector (minus a
   shared base in the default preset), scaled to unit RMS there, cut into chunks of the
   EN's input size with zero padding.
3. **Encoding network (EN)**, ``encoder.py``: one contractive autoencoder holds every skill;
   each chunk is kept only as its latent vector.
4. **Consolidation**, ``consolidation.py``: every stored skill is recalled by decoding its
   latents; the EN is retrained on recalled + new chunks until the stopping rule holds on
   the stored form; the TN weights are discarded. Only the new task's own data is used.
5. **Recall**: ``predict`` decodes the task's latents, loads them into a TN of the stored
   architecture and runs it (decoding counts as prediction cost).

Every TN is trained with the shared training recipe (:mod:`clbench.recipe`), the loop and
budget every baseline uses; a preset picks the recipe (``RECIPES``) and its fields are
keywords like any other setting (``TNEN(lr=0.05, epochs=5)``). Two presets (``PRESETS``;
any setting can be overridden by keyword):

- ``"paper"``: the authors' method where PAPER.md records their setting: TNs from their
  own random init, 3 epochs of SGD (lr 0.01, momentum 0.5) on all training data (nothing
  held out, no early stop); raw weights encoded by a 21,432 -> 2,000 -> 20 -> 2,000 ->
  21,432 tanh CAE stored in fp32, the authors' closed-form contractive term (lambda 1e-3),
  Adam lr 1e-4, one EN iteration = one Adam step per stored skill, stop once every
  reconstruction has cosine >= 0.99. Where PAPER.md is silent (batch size 64, the
  iteration cap) the values are ours. It is large: 85.8M parameters, 343,336,601 B after
  one skill (`benchmarks/tnen_goals.py --agent-arg preset=paper`, agents/README.md).
- ``"default"``: ours, built to store few bytes at equal accuracy (agents/README.md gives
  the measurements behind it): TNs trained with exactly the shared default recipe
  (:data:`clbench.recipe.DEFAULT`, as ``independent``'s networks); a shared *seeded*
  initialisation (regenerated from an int in the state) whose change the EN stores at unit
  RMS; a small EN (320 -> 160 -> 320, int8 with one scale per row) over chunks of 320;
  4-bit latents; the exact contractive penalty; the accuracy part of the stopping rule
  (and code refinement, off by default) judged on the part of the task's training data the
  recipe held out for the TN's early stopping; kept codes and a recall term.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from agents.tnen.chunks import (
    from_chunks,
    pack_latents,
    to_chunks,
    unpack_latents,
)
from agents.tnen.consolidation import Candidate, CheckCallback, consolidate, refine_codes
from agents.tnen.encoder import ContractiveAutoencoder
from agents.tnen.presets import resolve
from agents.tnen.task_network import (
    accuracy,
    build_task_network,
    flatten_parameters,
    load_parameters,
    seeded_task_network,
    task_seed,
)
from clbench.data import dataset_info
from clbench.nets import count_parameters
from clbench.quantize import dequantize_into, quantize
from clbench.recipe import TrainingLog, recipe_metrics, train
from clbench.tasks import Task
from clbench.training import dataset_for_unseen_task, predict_batched, seeded_for_unseen_task


class PendingSkill(NamedTuple):
    """A trained TN on its way into the EN: its task, its network, how it was trained, the
    metadata the state will keep, and what consolidation needs to judge it."""

    task: Task
    net: nn.Module
    trained: TrainingLog  # which examples trained the TN, which were held out
    skill: dict[str, Any]
    candidate: Candidate
    generator: torch.Generator  # the task's random stream, continued by consolidation


class TNEN:
    """Task networks trained by backprop, stored as latents of one contractive autoencoder.

    ``TNEN(device, preset="default", seed=None, **settings)``: ``settings`` override the
    preset's entries (``PRESETS``) and the fields of its TN training recipe (``RECIPES``:
    ``lr``, ``momentum``, ``batch_size``, ``epochs``, ``holdout_fraction``, ...). ``seed``
    fixes the shared TN initialisation, the EN's and every per-task random draw; ``None``
    draws it from torch's global generator at the first task (the harness seeds that per
    run). The state holds the seed, the EN's weights, every chunk's latent, and per skill
    its architecture, dataset, scale and storing-time held-out accuracies.
    """

    def __init__(self, device: str | torch.device = "cpu", preset: str = "default",
                 seed: int | None = None, **settings: Any) -> None:
        self.device = torch.device(device)
        self.config, self.recipe = resolve(preset, settings)
        self.seed = None if seed is None else int(seed)
        self.en: ContractiveAutoencoder | None = None
        self.latents: torch.Tensor | None = None  # (all chunks, latent_size), on their grid
        self.skills: list[dict[str, Any]] = []    # per skill: architecture, dataset, ...
        self._weights: dict[int, torch.Tensor] = {}  # decoded TN weights, rebuilt on demand
        self._templates: dict[tuple, nn.Module] = {}  # one TN per kind, loaded to recall a skill
        self._bases: dict[tuple, torch.Tensor] = {}  # regenerated from the seed on demand
        self._last_metrics: dict[str, Any] = {}
        self.last_training: TrainingLog | None = None  # the last TN's; not part of the state

    # ------------------------------------------------------------ per-skill helpers
    def _architecture_for(self, task_id: int) -> str:
        spec = self.config["architecture"]
        if isinstance(spec, str):
            return spec
        if isinstance(spec, dict):
            return spec.get(task_id, spec.get(str(task_id), "reference"))
        if task_id >= len(spec):
            raise ValueError(f"architecture list has {len(spec)} entries but task {task_id} "
                             "arrived; give one spec per task or a dict {task_id: spec}")
        return spec[task_id]

    def _base(self, spec: str, input_shape) -> torch.Tensor:
        """The vector every skill of this kind is stored relative to (zeros in the paper)."""
        key = (spec, tuple(input_shape))
        if key not in self._bases:
            base = flatten_parameters(seeded_task_network(spec, input_shape, self.seed))
            if not self.config["shared_init"]:
                base = torch.zeros_like(base)
            self._bases[key] = base.to(self.device)
        return self._bases[key]

    def _weights_of(self, skill: dict, chunks: torch.Tensor) -> torch.Tensor:
        """A skill's TN parameter vector from its (normalised) chunk reconstructions."""
        shape = dataset_info(skill["dataset"]).input_shape
        base = self._base(skill["architecture"], shape)
        return base + skill["scale"] * from_chunks(chunks, base.numel())

    def network_from(self, skill: dict, chunks: torch.Tensor) -> nn.Module:
        """The TN of ``skill`` rebuilt from (reconstructed) chunks."""
        shape = dataset_info(skill["dataset"]).input_shape
        net = build_task_network(skill["architecture"], shape).to(self.device)
        return load_parameters(net, self._weights_of(skill, chunks))

    @torch.no_grad()
    def _recall(self) -> torch.Tensor:
        """Every stored chunk, decoded from its stored latent (normalised units)."""
        if self.latents is None:
            return torch.zeros(0, self.config["chunk_size"], device=self.device)
        return self.en.decode(self.latents)

    # ------------------------------------------------------------ learn
    def _generator(self, task_id: int) -> torch.Generator:
        """The task's own random stream (draws the agent's seed first if it has none)."""
        if self.seed is None:
            self.seed = int(torch.randint(2**31 - 1, (1,)).item())
        return torch.Generator().manual_seed(task_seed(self.seed, task_id))

    def task_network(self, task: Task, generator: torch.Generator | None = None):
        """Train the TN that ``learn`` trains for ``task``, without storing anything.

        This is the fp32 network a stored skill is measured against (benchmarks and the
        paper's experiments compare its test accuracy with the reconstruction's).
        ``generator`` defaults to the task's own seeded one, so two calls give the same
        network. It is trained with ``self.recipe`` by the loop every baseline uses.
        Returns ``(net, TrainingLog)``: the log's ``holdout_index`` is the part of the
        task's training data that judges the stored skill (empty without a hold-out).
        """
        config = self.config
        if generator is None:
            generator = self._generator(task.id)
        spec = self._architecture_for(task.id)
        shape = tuple(task.input_shape)
        net = build_task_network(spec, shape).to(self.device)
        if config["shared_init"]:
            load_parameters(net, self._base(spec, shape))
        if config["warm_start"]:  # transfer by initialisation from the latest skill of its kind
            earlier = [i for i, s in enumerate(self.skills) if s["architecture"] == spec
                       and dataset_info(s["dataset"]).input_shape == shape]
            if earlier:
                load_parameters(net, self._decoded(earlier[-1]))
        net.train()
        return net, train(net, net.parameters(), task.x_train, task.y_train, self.recipe,
                          dataset=task.dataset, generator=generator)

    def prepare(self, task: Task) -> PendingSkill:
        """Train ``task``'s TN and cut it into the chunks the EN will store (nothing stored)."""
        config = self.config
        generator = self._generator(task.id)
        net, trained = self.task_network(task, generator)
        spec = self._architecture_for(task.id)
        delta = flatten_parameters(net) - self._base(spec, tuple(task.input_shape))
        scale = delta.pow(2).mean().sqrt().clamp_min(1e-12) if config["normalize"] else 1.0
        # the scale is stored as float32: use that value from the start
        skill = {"architecture": spec, "dataset": task.dataset,
                 "scale": torch.as_tensor(scale, dtype=torch.float32).item(),
                 "n_chunks": -(-delta.numel() // config["chunk_size"]),
                 "tn_accuracy": trained.holdout_accuracy}
        # the recipe's held-out part judges the stored skill; code refinement trains on the rest
        held, kept = trained.holdout_index, trained.train_index
        x_held, y_held = task.x_train[held], task.y_train[held]

        def held_out_accuracy(chunks: torch.Tensor) -> float | None:
            if len(y_held) == 0:
                return None
            return accuracy(self.network_from(skill, chunks), x_held, y_held, task.dataset)

        def refine(codes: torch.Tensor) -> torch.Tensor:
            net = build_task_network(spec, tuple(task.input_shape)).to(self.device)
            return refine_codes(self.en, config, net, lambda chunks: self._weights_of(
                skill, chunks), codes, task.x_train[kept], task.y_train[kept], task.dataset,
                self.recipe.batch_size, generator)

        candidate = Candidate(to_chunks(delta / skill["scale"], config["chunk_size"]),
                              trained.holdout_accuracy, held_out_accuracy,
                              refine if config["refine_epochs"] else None)
        return PendingSkill(task, net, trained, skill, candidate, generator)

    def _new_encoding_network(self) -> ContractiveAutoencoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            en = ContractiveAutoencoder.from_config(self.config)
        return en.to(self.device)

    def store(self, pending: list[PendingSkill], on_check: CheckCallback | None = None) -> None:
        """Consolidate the ``pending`` skills into the EN (all at once) and keep their codes.

        ``learn`` stores one skill per task; the paper's batch experiment stores many at once
        and watches every check through ``on_check``.
        """
        if self.en is None:
            self.en = self._new_encoding_network()
        self.latents, report = consolidate(
            self.en, self.config, self._recall(), self.latents,
            [s["n_chunks"] for s in self.skills], [p.candidate for p in pending],
            pending[0].generator, on_check)
        for item, stored in zip(pending, report.pop("new_accuracies"), strict=True):
            item.skill["stored_accuracy"] = stored
            self.skills.append(item.skill)
        self._weights = {}
        self.last_training = pending[-1].trained
        report.pop("en_seconds")  # wall time: the harness measures it; the state stays replayable
        per_skill = zip(self.skills, report.pop("cosines"), report.pop("relative_errors"),
                        strict=True)
        last = pending[-1]
        self._last_metrics = {
            "task_id": last.task.id,
            "architecture": last.skill["architecture"],
            "tn_parameters": count_parameters(last.net),
            **recipe_metrics(self.recipe, last.trained),
            "tn_backprop_calls": sum(p.trained.steps for p in pending),
            "stored_held_out_accuracy": last.skill["stored_accuracy"],
            **report,
            "skills": [
                {"task_id": i, "architecture": s["architecture"],
                 "tn_held_out_accuracy": s["tn_accuracy"],
                 "stored_held_out_accuracy": s["stored_accuracy"],
                 "cosine": cos, "relative_error": err}
                for i, (s, cos, err) in enumerate(per_skill)
            ],
        }

    def learn(self, task: Task) -> None:
        self.store([self.prepare(task)])

    # ------------------------------------------------------------ predict
    def _decoded(self, task_id: int) -> torch.Tensor:
        """A stored skill's TN weights, decoded from its latents (kept until the state
        changes)."""
        if task_id not in self._weights:
            start = sum(skill["n_chunks"] for skill in self.skills[:task_id])
            rows = slice(start, start + self.skills[task_id]["n_chunks"])
            with torch.no_grad():
                chunks = self.en.decode(self.latents[rows])
            self._weights[task_id] = self._weights_of(self.skills[task_id], chunks)
        return self._weights[task_id]

    def _network(self, task_id: int) -> nn.Module:
        """A stored skill's TN: its decoded weights loaded into the one network of its kind,
        so recalling many skills builds no module per skill (building 333 reference nets took
        a tenth of an evaluation step at 333 tasks). Use it before recalling another skill."""
        skill = self.skills[task_id]
        kind = (skill["architecture"], dataset_info(skill["dataset"]).input_shape)
        if kind not in self._templates:
            self._templates[kind] = build_task_network(*kind).to(self.device)
        return load_parameters(self._templates[kind], self._decoded(task_id))

    def predict(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        if task_id >= len(self.skills):  # not learned yet (query_future): a best guess
            shape = tuple(x.shape[1:])
            dataset = dataset_for_unseen_task(shape, [s["dataset"] for s in self.skills])
            return predict_batched(self._unseen_network(task_id, shape), x.to(self.device),
                                   dataset)
        net = self._network(task_id)
        net.eval()
        return predict_batched(net, x.to(self.device), self.skills[task_id]["dataset"])

    def _unseen_network(self, task_id: int, shape: tuple[int, ...]) -> nn.Module:
        """The untrained TN of a task not learned yet: the shared base its training would start
        from (``shared_init``, once the agent has its seed), else one drawn for the task id."""
        spec = self._architecture_for(task_id)
        if self.config["shared_init"] and self.seed is not None:
            net = seeded_task_network(spec, shape, self.seed)
        else:
            with seeded_for_unseen_task(task_id):
                net = build_task_network(spec, shape)
        return net.to(self.device).eval()

    def metrics(self) -> dict[str, Any]:
        """Figures of the last ``learn``: the TN (as every baseline reports them: ``recipe``,
        the resolved training recipe, and ``epochs_trained``, ``best_epoch``,
        ``holdout_accuracy``; and ``tn_backprop_calls``), the EN (iterations and backprop
        calls to integrate the skill, whether the stopping rule was met, the new skill's
        cosine and relative error to its TN, the largest drift of a recalled skill), and per
        stored skill its TN's held-out accuracy and its stored reconstruction's, both at
        storing time, with its cosine and relative error against its recall now (against its
        TN for the new skill). Accuracy *now* on test data is the harness's accuracy matrix:
        the agent keeps no data of old tasks."""
        return self._last_metrics

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.en is None:
            return {"base_seed": self.seed, "skills": {}}
        columns = {key: [s[key] for s in self.skills] for key in self.skills[0]}
        columns["scale"] = torch.tensor(columns["scale"], dtype=torch.float32)
        for key in ("tn_accuracy", "stored_accuracy"):  # None (nothing held out) as NaN
            columns[key] = torch.tensor([math.nan if v is None else v for v in columns[key]],
                                        dtype=torch.float16)
        return {
            "base_seed": self.seed,
            "skills": columns,
            "en": quantize(self.en, self.config["en_dtype"]),
            "latents": pack_latents(self.latents, self.config["latent_bits"]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["base_seed"]
        columns = state["skills"]
        self._weights, self._last_metrics, self.last_training = {}, {}, None
        if not columns:
            self.en, self.latents, self.skills = None, None, []
            return
        self.skills = [
            {key: (values[i].item() if torch.is_tensor(values) else values[i])
             for key, values in columns.items()}
            for i in range(len(columns["architecture"]))
        ]
        for skill in self.skills:
            for key in ("tn_accuracy", "stored_accuracy"):
                skill[key] = None if math.isnan(skill[key]) else skill[key]
        self.en = self._new_encoding_network()
        dequantize_into(self.en, state["en"])
        shape = (sum(s["n_chunks"] for s in self.skills), self.config["latent_size"])
        self.latents = unpack_latents(state["latents"], self.config["latent_bits"],
                                      shape).to(self.device)
