"""TN+EN: task networks stored as the latent vectors of one lifelong contractive autoencoder.

The reference agent of clbench, after Mandivarapu, Camp & Estrada (Self-Net, 2020; see
PAPER.md). Learning a skill and storing it are decoupled:

1. **Task network (TN).** Each new task gets its own network, trained by plain backprop on
   that task alone (SGD, per-epoch check on a held-out part of the task's training data,
   stop at accuracy ``threshold`` or after ``max_epochs``). The architecture is the
   reference net for the task's input shape or any spec named per task (``"mlp:64"``).
2. **Flatten and chunk.** The TN's parameters become one vector (minus a shared base, see
   below), scaled to unit RMS, cut into chunks of the EN's input size with zero padding.
3. **Encoding network (EN).** One contractive autoencoder (reconstruction loss + lambda *
   squared Frobenius norm of the encoder's Jacobian, exact for its tanh/sigmoid layers)
   holds every skill: each chunk is kept only as its latent vector.
4. **Consolidation.** Every stored skill is recalled by decoding its latents; the EN is
   retrained on recalled + new chunks (each step: all new chunks and a fixed-size sample of
   recalled ones, so the cost of adding a skill does not grow with the number of skills)
   until every reconstruction meets the stopping rule, checked on the *stored* form (EN
   weights and latents rounded to their storage dtypes): the new skill against its TN
   (cosine, relative error, held-out accuracy within a tolerance), the recalled ones against
   their recall (cosine, relative error). When the new skill is close enough in weights but
   not in held-out accuracy, its codes alone are trained on the task's training data through
   the fixed decoder (``refine_epochs``; no other skill moves). Then every skill is
   re-encoded and the TN weights are discarded. Only the new task's own data is used.
5. **Recall.** ``predict`` decodes the task's latents, loads them into a TN of the stored
   architecture and runs it (decoding counts as prediction cost).

Two presets (any setting can be overridden by keyword):

- ``"default"``: ours, built to store few bytes at equal accuracy (agents/README.md gives
  the measurements behind it). Every TN starts from one shared *seeded* initialisation
  (regenerated from an int in the state, so it costs no bytes) and the EN stores only what
  training changed, scaled to unit RMS. A small EN (320 -> 160 -> 320, 103k parameters,
  stored as int8 with one scale per row: ``clbench.quantize``) over chunks of 320, which
  line up with the rows of the reference net's big layer; 4-bit latents, the EN trained
  with that rounding as noise. A recalled chunk keeps its
  code unless re-encoding reconstructs it better, and a loss term keeps old codes decoding
  to their recall, so consolidation does not re-add rounding noise to old skills.
- ``"paper"``: the authors' settings: TNs from their own random init (3 epochs of SGD lr
  0.01 momentum 0.5), raw weights encoded by a 21,432 -> 2,000 -> 20 -> 2,000 -> 21,432
  tanh CAE (lambda 1e-3, Adam lr 1e-4) stored in fp32, stop once every reconstruction
  has cosine > 0.99. It is large (85.8M parameters, 343 MB) and slow on a CPU. One EN
  iteration here is one full-batch step over every stored chunk (the authors' code takes
  one Adam step per skill).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from clbench.data import dataset_info
from clbench.nets import count_parameters, reference_net
from clbench.quantize import DTYPES, dequantize_into, quantize, round_to_storage
from clbench.tasks import Task
from clbench.training import (
    dataset_for_unseen_task,
    minibatches,
    predict_batched,
    seeded_for_unseen_task,
)

# Hyperparameters of the two presets. Every key is also a keyword of TNEN(...).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        # task networks
        "architecture": "reference",  # a spec for every task, a list per task id, or a dict
        "shared_init": True,          # every TN starts from one seeded init; EN stores deltas
        "warm_start": False,          # start from the most recent skill of the same kind
        "tn_lr": 0.05,
        "tn_momentum": 0.9,
        "tn_batch_size": 64,
        "max_epochs": 20,
        "threshold": 0.95,            # stop training a TN at this held-out accuracy
        "holdout_fraction": 0.2,      # share of the task's training data held out
        # encoding network
        "chunk_size": 320,
        "hidden_sizes": [],
        "latent_size": 160,
        "activation": "tanh",
        "contractive_weight": 1e-4,
        "en_lr": 3e-4,
        "normalize": True,            # scale each skill's vector to unit RMS before encoding
        "en_dtype": "int8",           # storage of the EN's weights (clbench.quantize.DTYPES)
        "latent_bits": 4,             # latents stored on a grid of 2**bits - 1 levels (or 16/32)
        "latent_noise": True,         # train the EN with that grid's rounding noise
        "keep_codes": True,           # a recalled chunk keeps its code unless re-encoding helps
        "refine_epochs": 2,           # new skill below its TN's accuracy: train its codes
        "refine_lr": 0.01,            # (Adam, straight-through rounding), the EN held fixed,
        "max_refinements": 10,        # at most this often per new skill
        "recall_weight": 10.0,        # weight of "old codes still decode to their recall"
        # consolidation and its stopping rule
        "en_max_steps": 800,
        "en_check_every": 10,
        "replay_chunks": 256,         # recalled chunks per step (None: all of them)
        "min_cosine": 0.96,           # every skill, against its target
        "max_relative_error": 0.25,   # new skill against its TN
        "max_recall_drift": 0.1,      # recalled skills against their recall
        "accuracy_tolerance": 0.005,  # new skill: held-out accuracy vs its TN
    },
    "paper": {
        "architecture": "reference",
        "shared_init": False,
        "warm_start": False,
        "tn_lr": 0.01,
        "tn_momentum": 0.5,
        "tn_batch_size": 64,
        "max_epochs": 3,
        "threshold": 0.95,
        "holdout_fraction": 0.2,
        "chunk_size": 21432,
        "hidden_sizes": [2000],
        "latent_size": 20,
        "activation": "tanh",
        "contractive_weight": 1e-3,
        "en_lr": 1e-4,
        "normalize": False,
        "en_dtype": "float32",
        "latent_bits": 32,
        "latent_noise": False,
        "keep_codes": False,
        "refine_epochs": 0,
        "refine_lr": 0.0,
        "max_refinements": 0,
        "recall_weight": 0.0,
        "en_max_steps": 3000,
        "en_check_every": 10,
        "replay_chunks": None,
        "min_cosine": 0.99,
        "max_relative_error": None,
        "max_recall_drift": None,
        "accuracy_tolerance": None,
    },
}

LATENT_BITS = (4, 8, 16, 32)  # 4 and 8: a uniform grid on [-1, 1]; 16, 32: floats


# ---------------------------------------------------------------- task networks
def build_task_network(spec: str, input_shape) -> nn.Module:
    """A TN for ``input_shape``: ``"reference"`` (clbench.nets) or ``"mlp:H1,H2,..."``."""
    if spec == "reference":
        return reference_net(input_shape)
    kind, _, sizes = spec.partition(":")
    hidden = sizes.split(",") if sizes else []
    if kind == "mlp" and all(size.isdigit() and int(size) > 0 for size in hidden):
        widths = [math.prod(input_shape), *map(int, hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], 2))
    raise ValueError(f"unknown architecture {spec!r}; use 'reference' or 'mlp:H1,H2,...' "
                     "with positive hidden sizes, e.g. 'mlp:64'")


def seeded_task_network(spec: str, input_shape, seed: int) -> nn.Module:
    """The TN of ``spec`` with PyTorch's default initialisation drawn from ``seed`` (on CPU,
    so the same seed gives the same weights everywhere): the shared base of every skill."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_task_network(spec, input_shape)


def flatten_parameters(net: nn.Module) -> torch.Tensor:
    """All parameters of ``net`` as one detached vector, in ``net.parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def load_parameters(net: nn.Module, vector: torch.Tensor) -> nn.Module:
    """Copy ``vector`` (as laid out by :func:`flatten_parameters`) into ``net``."""
    if vector.numel() != count_parameters(net):
        raise ValueError(f"a vector of {vector.numel()} numbers cannot fill a network of "
                         f"{count_parameters(net)} parameters")
    with torch.no_grad():
        start = 0
        for parameter in net.parameters():
            parameter.copy_(vector[start : start + parameter.numel()].view_as(parameter))
            start += parameter.numel()
    return net


def to_chunks(vector: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``vector`` zero-padded to a multiple of ``chunk_size`` and cut into rows of that size."""
    n_chunks = -(-vector.numel() // chunk_size)
    padded = vector.new_zeros(n_chunks * chunk_size)
    padded[: vector.numel()] = vector
    return padded.view(n_chunks, chunk_size)


def from_chunks(chunks: torch.Tensor, length: int) -> torch.Tensor:
    """Undo :func:`to_chunks`: the first ``length`` numbers of the concatenated chunks."""
    return chunks.reshape(-1)[:length]


def holdout_split(task: Task, fraction: float, generator: torch.Generator):
    """(train inputs, train labels, held-out inputs, held-out labels), a seeded random split."""
    n = len(task.y_train)
    order = torch.randperm(n, generator=generator).to(task.y_train.device)
    n_held = min(max(1, round(n * fraction)), n - 1) if n > 1 else 0
    held, kept = order[:n_held], order[n_held:]
    return task.x_train[kept], task.y_train[kept], task.x_train[held], task.y_train[held]


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: str) -> float:
    """Share of ``images`` that ``net`` labels correctly (0.0 for an empty set, so that a
    task too small to hold data out trains for ``max_epochs``)."""
    if len(labels) == 0:
        return 0.0
    net.eval()
    return (predict_batched(net, images, dataset) == labels).double().mean().item()


class TrainedTaskNetwork(NamedTuple):
    """What training a TN leaves besides its weights: the data split and the effort."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_held: torch.Tensor
    y_held: torch.Tensor
    held_out_accuracy: float
    epochs: int
    steps: int


def train_task_network(net: nn.Module, task: Task, config: dict,
                       generator: torch.Generator) -> TrainedTaskNetwork:
    """Plain backprop on one task until held-out accuracy reaches ``threshold`` or
    ``max_epochs`` pass."""
    x_train, y_train, x_held, y_held = holdout_split(task, config["holdout_fraction"], generator)
    optimizer = torch.optim.SGD(net.parameters(), lr=config["tn_lr"],
                                momentum=config["tn_momentum"])
    held_accuracy, epochs, steps = accuracy(net, x_held, y_held, task.dataset), 0, 0
    while epochs < config["max_epochs"] and held_accuracy < config["threshold"]:
        net.train()
        for x, y in minibatches(x_train, y_train, task.dataset, config["tn_batch_size"],
                                generator):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            steps += 1
        epochs += 1
        held_accuracy = accuracy(net, x_held, y_held, task.dataset)
    return TrainedTaskNetwork(x_train, y_train, x_held, y_held, held_accuracy, epochs, steps)


# ---------------------------------------------------------------- encoding network
class ContractiveAutoencoder(nn.Module):
    """input -> hidden... -> latent (each tanh or sigmoid) -> hidden... -> input (linear out).

    The contractive penalty is the squared Frobenius norm of d latent / d input, computed
    exactly for these layers: J = diag(s_K) W_K ... diag(s_1) W_1 with s_k the derivative
    of layer k's nonlinearity (Rifai et al., 2011).
    """

    def __init__(self, input_size: int, hidden_sizes, latent_size: int, activation: str) -> None:
        super().__init__()
        if activation not in ("tanh", "sigmoid"):
            raise ValueError(f"activation={activation!r}: the EN supports 'tanh' or 'sigmoid'")
        self.activation = torch.tanh if activation == "tanh" else torch.sigmoid
        self.is_tanh = activation == "tanh"
        sizes = [input_size, *hidden_sizes, latent_size]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes[::-1]))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContractiveAutoencoder:
        """The EN a TNEN preset (or overrides of one) describes."""
        return cls(config["chunk_size"], config["hidden_sizes"], config["latent_size"],
                   config["activation"])

    def _slope(self, h: torch.Tensor) -> torch.Tensor:
        """Derivative of the nonlinearity, written in terms of its output ``h``."""
        return 1 - h * h if self.is_tanh else h * (1 - h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = self.activation(layer(x))
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.decoder[:-1]:
            z = self.activation(layer(z))
        return self.decoder[-1](z)

    def encode_with_penalty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, per-example squared Frobenius norm of the encoder's Jacobian)."""
        slopes = []
        for layer in self.encoder:
            x = self.activation(layer(x))
            slopes.append(self._slope(x))
        weights = [layer.weight for layer in self.encoder]
        if len(weights) == 1:  # J = diag(s) W: sum_j s_j^2 |W_j|^2, no Jacobian materialised
            return x, (slopes[0] ** 2) @ weights[0].pow(2).sum(1)
        jacobian = slopes[-1].unsqueeze(2) * weights[-1]
        for weight, slope in zip(weights[-2::-1], slopes[-2::-1], strict=True):
            jacobian = (jacobian * slope.unsqueeze(1)) @ weight
        return x, jacobian.pow(2).sum((1, 2))


def grid_levels(bits: int) -> int:
    """Number of grid steps on each side of 0 for a ``bits``-bit latent (0: stored as float)."""
    return 2 ** (bits - 1) - 1 if bits <= 8 else 0


def quantize_latents(latents: torch.Tensor, bits: int) -> torch.Tensor:
    """Latents rounded exactly as storing them with ``bits`` bits rounds them (as float32)."""
    levels = grid_levels(bits)
    if levels:
        return (latents * levels).round().clamp(-levels, levels) / levels
    return latents.to(torch.float16 if bits == 16 else torch.float32).float()


def pack_latents(latents: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantised latents in their storage form: int8 codes, two 4-bit codes per uint8, or
    float16/float32 values. :func:`unpack_latents` is its exact inverse."""
    levels = grid_levels(bits)
    if not levels:
        return latents.to(torch.float16 if bits == 16 else torch.float32).cpu()
    codes = (latents * levels).round().clamp(-levels, levels).to(torch.int16).reshape(-1)
    if bits == 8:
        return codes.to(torch.int8).cpu()
    nibbles = (codes + levels).to(torch.uint8)
    if len(nibbles) % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).cpu()


def unpack_latents(stored: torch.Tensor, bits: int, shape: tuple[int, int]) -> torch.Tensor:
    levels = grid_levels(bits)
    if not levels:
        return stored.float().reshape(shape)
    if bits == 8:
        codes = stored.to(torch.int16)
    else:
        codes = torch.stack([stored & 15, stored >> 4], dim=1).reshape(-1).to(torch.int16) - levels
    return (codes[: shape[0] * shape[1]].float() / levels).reshape(shape)


def _cosine_and_error(recon, target, owner, n_owners):
    """Per-owner cosine similarity and relative error of chunk rows grouped by ``owner``."""
    def per_owner(values):
        return torch.zeros(n_owners, device=values.device).index_add_(0, owner, values)
    dot = per_owner((recon * target).sum(1))
    recon_sq, target_sq = per_owner(recon.pow(2).sum(1)), per_owner(target.pow(2).sum(1))
    error_sq = per_owner((recon - target).pow(2).sum(1))
    tiny = torch.finfo(torch.float32).tiny
    cosine = dot / (recon_sq.sqrt() * target_sq.sqrt()).clamp_min(tiny)
    return cosine, (error_sq / target_sq.clamp_min(tiny)).sqrt()


# ---------------------------------------------------------------- the agent
class TNEN:
    """Task networks trained by backprop, stored as latents of one contractive autoencoder.

    ``TNEN(device, preset="default", seed=None, **settings)``: ``settings`` override the
    preset's entries (see ``PRESETS``). ``seed`` fixes the shared TN initialisation, the EN's
    and every per-task random draw; ``None`` draws it from torch's global generator at the
    first task (the harness seeds that per run). The state holds the seed, the EN's weights,
    every chunk's latent, and per skill its architecture, dataset, scale and storing-time
    held-out accuracies.
    """

    def __init__(self, device: str | torch.device = "cpu", preset: str = "default",
                 seed: int | None = None, **settings: Any) -> None:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: choose one of {', '.join(PRESETS)}")
        unknown = sorted(set(settings) - set(PRESETS[preset]))
        if unknown:
            raise ValueError(f"unknown TNEN setting(s) {', '.join(unknown)}; valid settings: "
                             f"{', '.join(PRESETS[preset])}")
        self.device = torch.device(device)
        self.config = {**PRESETS[preset], **settings}
        if self.config["en_dtype"] not in DTYPES:
            raise ValueError(f"en_dtype={self.config['en_dtype']!r}: choose one of "
                             f"{', '.join(DTYPES)}")
        if self.config["latent_bits"] not in LATENT_BITS:
            raise ValueError(f"latent_bits={self.config['latent_bits']!r}: choose one of "
                             f"{', '.join(map(str, LATENT_BITS))}")
        self.seed = None if seed is None else int(seed)
        self.en: ContractiveAutoencoder | None = None
        self.latents: torch.Tensor | None = None  # (all chunks, latent_size), on their grid
        self.skills: list[dict[str, Any]] = []    # per skill: architecture, dataset, ...
        self._networks: dict[int, nn.Module] = {}  # decoded TNs, rebuilt on demand
        self._bases: dict[tuple, torch.Tensor] = {}  # regenerated from the seed on demand
        self._last_metrics: dict[str, Any] = {}

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

    def _chunk_rows(self) -> list[range]:
        """Rows of ``self.latents`` that belong to each stored skill."""
        rows, start = [], 0
        for skill in self.skills:
            rows.append(range(start, start + skill["n_chunks"]))
            start += skill["n_chunks"]
        return rows

    def _weights_of(self, skill: dict, chunks: torch.Tensor) -> torch.Tensor:
        """A skill's TN parameter vector from its (normalised) chunk reconstructions."""
        shape = dataset_info(skill["dataset"]).input_shape
        base = self._base(skill["architecture"], shape)
        return base + skill["scale"] * from_chunks(chunks, base.numel())

    def _network_from(self, skill: dict, chunks: torch.Tensor) -> nn.Module:
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
    def task_network(self, task: Task, generator: torch.Generator | None = None):
        """Train the TN that ``learn`` trains for ``task``, without storing anything.

        This is the fp32 network a stored skill is measured against (benchmarks compare
        its test accuracy with the reconstruction's). ``generator`` defaults to the task's
        own seeded one, so two calls give the same network. Returns ``(net,
        TrainedTaskNetwork)``.
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
                load_parameters(net, flatten_parameters(self._network(earlier[-1])))
        return net, train_task_network(net, task, config, generator)

    def _generator(self, task_id: int) -> torch.Generator:
        """The task's own random stream (draws the agent's seed first if it has none)."""
        if self.seed is None:
            self.seed = int(torch.randint(2**31 - 1, (1,)).item())
        return torch.Generator().manual_seed(self.seed * 1_000_003 + task_id)

    def learn(self, task: Task) -> None:
        config = self.config
        generator = self._generator(task.id)
        net, trained = self.task_network(task, generator)
        x_held, y_held, tn_accuracy = trained.x_held, trained.y_held, trained.held_out_accuracy
        spec = self._architecture_for(task.id)
        base = self._base(spec, tuple(task.input_shape))

        delta = flatten_parameters(net) - base
        scale = delta.pow(2).mean().sqrt().clamp_min(1e-12) if config["normalize"] else 1.0
        # the scale is stored as float32: use that value from the start
        skill = {"architecture": spec, "dataset": task.dataset,
                 "scale": torch.as_tensor(scale, dtype=torch.float32).item(),
                 "n_chunks": -(-delta.numel() // config["chunk_size"]),
                 "tn_accuracy": tn_accuracy}
        new_chunks = to_chunks(delta / skill["scale"], config["chunk_size"])

        def held_out_accuracy(chunks: torch.Tensor) -> float:
            return accuracy(self._network_from(skill, chunks), x_held, y_held, task.dataset)

        def refine(codes: torch.Tensor) -> torch.Tensor:
            return self._refine_codes(skill, codes, trained.x_train, trained.y_train, generator)

        report = self._consolidate(new_chunks, held_out_accuracy,
                                   refine if config["refine_epochs"] else None,
                                   tn_accuracy, generator)
        skill["stored_accuracy"] = report.pop("new_accuracy")
        self.skills.append(skill)
        self._networks = {}
        per_skill = zip(self.skills, report.pop("cosines"), report.pop("relative_errors"),
                        strict=True)
        self._last_metrics = {
            "task_id": task.id,
            "architecture": spec,
            "tn_parameters": count_parameters(net),
            "tn_epochs": trained.epochs,
            "tn_backprop_calls": trained.steps,
            "tn_held_out_accuracy": tn_accuracy,
            "stored_held_out_accuracy": skill["stored_accuracy"],
            **report,
            "skills": [
                {"task_id": i, "architecture": s["architecture"],
                 "tn_held_out_accuracy": s["tn_accuracy"],
                 "stored_held_out_accuracy": s["stored_accuracy"],
                 "cosine": cos, "relative_error": err}
                for i, (s, cos, err) in enumerate(per_skill)
            ],
        }

    def _new_encoding_network(self) -> ContractiveAutoencoder:
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            en = ContractiveAutoencoder.from_config(config)
        return en.to(self.device)

    @torch.no_grad()
    def _encode(self, targets: torch.Tensor, n_old: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes on the storage grid, their reconstructions) of every chunk. With
        ``keep_codes`` a recalled chunk keeps its previous code where that still
        reconstructs it at least as well, so recall -> re-encode adds no rounding noise."""
        codes = quantize_latents(self.en.encode(targets), self.config["latent_bits"])
        recon = self.en.decode(codes)
        if self.config["keep_codes"] and n_old:
            kept = self.en.decode(self.latents)
            old = targets[:n_old]
            better = (kept - old).pow(2).sum(1) <= (recon[:n_old] - old).pow(2).sum(1)
            codes[:n_old][better] = self.latents[better]
            recon[:n_old][better] = kept[better]
        return codes, recon

    def _consolidate(self, new_chunks, held_out_accuracy, refine, tn_accuracy,
                     generator) -> dict:
        """Retrain the EN on recalled + new chunks until the stopping rule holds; re-encode.

        Every ``en_check_every`` steps the new skill is checked (cheap: its own chunks and
        held-out data); only once it passes are the recalled skills checked too (a pass
        over every stored chunk), so that training stops at the smallest change to the EN
        that stores the new skill and keeps the old ones.
        """
        config = self.config
        if self.en is None:
            self.en = self._new_encoding_network()
        recalled = self._recall()
        targets = torch.cat([recalled, new_chunks])
        n_old, n_new, n_skills = len(recalled), len(new_chunks), len(self.skills) + 1
        owner = torch.cat([
            torch.full((len(rows),), i, dtype=torch.long) for i, rows in
            enumerate([*self._chunk_rows(), range(n_new)])]).to(self.device)
        optimizer = torch.optim.Adam(self.en.parameters(), lr=config["en_lr"])
        replay = config["replay_chunks"]
        levels = grid_levels(config["latent_bits"])
        noise_step = 1 / levels if levels and config["latent_noise"] else 0.0
        steps, full_checks, refinements, met = 0, 0, 0, False
        new_owner = owner[:n_new] * 0

        def new_fit(recon: torch.Tensor) -> tuple[float, float]:
            """(cosine, relative error) of the new skill's reconstruction to its TN."""
            cosine, error = _cosine_and_error(recon, new_chunks, new_owner, 1)
            return cosine.item(), error.item()

        while True:
            last = steps == config["en_max_steps"]
            if steps % config["en_check_every"] == 0 or last:
                # check what would be stored: the EN rounded to its storage dtype (training
                # goes on from the unrounded weights, so small steps are not rounded away)
                master = parameters_to_vector(self.en.parameters()).detach().clone()
                round_to_storage(self.en, config["en_dtype"])
                new_codes, new_recon = self._encode(new_chunks, 0)
                new_cosine, new_error = new_fit(new_recon)
                new_accuracy = held_out_accuracy(new_recon)
                if (refine is not None and refinements < config["max_refinements"]
                        and not self._accuracy_ok(new_accuracy, tn_accuracy)
                        and self._weights_ok(new_cosine, new_error)):
                    refined_codes = refine(new_codes)
                    refined_recon = self.en.decode(refined_codes)
                    refined_accuracy = held_out_accuracy(refined_recon)
                    refined_cosine, refined_error = new_fit(refined_recon)
                    refinements += 1
                    if (refined_accuracy > new_accuracy
                            and self._weights_ok(refined_cosine, refined_error)):
                        new_codes, new_recon, new_accuracy = (
                            refined_codes, refined_recon, refined_accuracy)
                        new_cosine, new_error = refined_cosine, refined_error
                new_ok = self._new_skill_ok(new_cosine, new_error, new_accuracy, tn_accuracy)
                if new_ok or last:
                    full_checks += 1
                    codes, recon = self._encode(targets, n_old)
                    codes[n_old:], recon[n_old:] = new_codes, new_recon
                    cosine, error = _cosine_and_error(recon, targets, owner, n_skills)
                    met = new_ok and self._recalled_ok(cosine, error)
                    if met or last:
                        break
                vector_to_parameters(master, self.en.parameters())
            if replay is None or replay >= n_old:
                pick = torch.arange(n_old, device=self.device)
            else:
                pick = torch.randint(n_old, (replay,), generator=generator).to(self.device)
            batch = torch.cat([new_chunks, recalled[pick]])
            latents, penalty = self.en.encode_with_penalty(batch)
            if noise_step:  # rounding to the storage grid, as additive uniform noise
                latents = latents + (torch.rand_like(latents) - 0.5) * noise_step
            errors = (self.en.decode(latents) - batch).pow(2).sum(1)
            # the new skill weighs as much as the recalled ones, however few its chunks
            loss = errors[:n_new].mean() + config["contractive_weight"] * penalty.mean()
            if len(pick):
                loss = loss + errors[n_new:].mean()
            if config["keep_codes"] and len(pick):  # old codes must still decode to their recall
                drift = (self.en.decode(self.latents[pick]) - recalled[pick]).pow(2).sum(1).mean()
                loss = loss + config["recall_weight"] * drift
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        self.latents = codes
        return {
            "en_iterations": steps,
            "en_backprop_calls": steps,
            "en_full_checks": full_checks,
            "code_refinements": refinements,
            "stopping_rule_met": bool(met),
            "new_accuracy": new_accuracy,
            "new_cosine": cosine[-1].item(),
            "new_relative_error": error[-1].item(),
            "max_recall_drift": error[:-1].max().item() if n_skills > 1 else 0.0,
            "mean_recall_drift": error[:-1].mean().item() if n_skills > 1 else 0.0,
            "cosines": cosine.tolist(),
            "relative_errors": error.tolist(),
        }

    def _new_skill_ok(self, cosine: float, error: float, held_out_accuracy: float,
                      tn_accuracy: float) -> bool:
        """The stopping rule for the new skill: against its TN's weights and accuracy."""
        return (self._weights_ok(cosine, error)
                and self._accuracy_ok(held_out_accuracy, tn_accuracy))

    def _weights_ok(self, cosine: float, error: float) -> bool:
        config = self.config
        return cosine >= config["min_cosine"] and (
            config["max_relative_error"] is None or error <= config["max_relative_error"])

    def _accuracy_ok(self, held_out_accuracy: float, tn_accuracy: float) -> bool:
        tolerance = self.config["accuracy_tolerance"]
        return tolerance is None or held_out_accuracy >= tn_accuracy - tolerance

    def _refine_codes(self, skill: dict, codes: torch.Tensor, images: torch.Tensor,
                      labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The new skill's codes after ``refine_epochs`` of Adam on its task's training data,
        through the EN's decoder (held fixed: no other skill moves) and the TN.

        Weight-space closeness (cosine, relative error) does not say which errors hurt the
        task; this trains the reconstruction on the task itself. Rounding to the latent grid
        is straight-through, so what is trained is what is stored.
        """
        config = self.config
        shape = dataset_info(skill["dataset"]).input_shape
        net = build_task_network(skill["architecture"], shape).to(self.device).train()
        names = [name for name, _ in net.named_parameters()]
        shapes = [p.shape for p in net.parameters()]
        sizes = [p.numel() for p in net.parameters()]
        latent = codes.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=config["refine_lr"])
        bits = config["latent_bits"]
        self.en.requires_grad_(False)
        try:
            for _ in range(config["refine_epochs"]):
                for x, y in minibatches(images, labels, skill["dataset"],
                                        config["tn_batch_size"], generator):
                    stored = latent + (quantize_latents(latent, bits) - latent).detach()
                    vector = self._weights_of(skill, self.en.decode(stored))
                    parameters = {name: part.view(size) for name, part, size in
                                  zip(names, vector.split(sizes), shapes, strict=True)}
                    loss = F.cross_entropy(torch.func.functional_call(net, parameters, (x,)), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        finally:
            self.en.requires_grad_(True)
        return quantize_latents(latent.detach(), bits)

    def _recalled_ok(self, cosine: torch.Tensor, error: torch.Tensor) -> bool:
        """The stopping rule for the recalled skills: against their recall."""
        if len(cosine) == 1:
            return True
        drift = self.config["max_recall_drift"]
        return cosine[:-1].min().item() >= self.config["min_cosine"] and (
            drift is None or error[:-1].max().item() <= drift)

    # ------------------------------------------------------------ predict
    def _network(self, task_id: int) -> nn.Module:
        if task_id not in self._networks:
            rows = self._chunk_rows()[task_id]
            with torch.no_grad():
                chunks = self.en.decode(self.latents[rows.start:rows.stop])
            self._networks[task_id] = self._network_from(self.skills[task_id], chunks)
        return self._networks[task_id]

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
        """Figures of the last ``learn``: the TN (epochs, backprop calls, held-out accuracy),
        the EN (iterations and backprop calls to integrate the skill, whether the stopping
        rule was met, the new skill's cosine and relative error to its TN, the largest drift
        of a recalled skill), and per stored skill its TN's held-out accuracy and its stored
        reconstruction's, both at storing time, with its cosine and relative error against
        its recall now (against its TN for the new skill). Accuracy *now* on test data is
        the harness's accuracy matrix: the agent keeps no data of old tasks."""
        return self._last_metrics

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.en is None:
            return {"base_seed": self.seed, "skills": {}}
        columns = {key: [s[key] for s in self.skills] for key in self.skills[0]}
        columns["scale"] = torch.tensor(columns["scale"], dtype=torch.float32)
        for key in ("tn_accuracy", "stored_accuracy"):
            columns[key] = torch.tensor(columns[key], dtype=torch.float16)
        return {
            "base_seed": self.seed,
            "skills": columns,
            "en": quantize(self.en, self.config["en_dtype"]),
            "latents": pack_latents(self.latents, self.config["latent_bits"]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["base_seed"]
        columns = state["skills"]
        self._networks, self._last_metrics = {}, {}
        if not columns:
            self.en, self.latents, self.skills = None, None, []
            return
        self.skills = [
            {key: (values[i].item() if torch.is_tensor(values) else values[i])
             for key, values in columns.items()}
            for i in range(len(columns["architecture"]))
        ]
        self.en = self._new_encoding_network()
        dequantize_into(self.en, state["en"])
        shape = (sum(s["n_chunks"] for s in self.skills), self.config["latent_size"])
        self.latents = unpack_latents(state["latents"], self.config["latent_bits"],
                                      shape).to(self.device)
