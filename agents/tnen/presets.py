"""The agent's two presets (PAPER.md, "Settings in the authors' public code"): ``"paper"``,
the authors' method where the paper records their setting, and ``"default"``, ours.

A preset is its settings (``PRESETS``) and the recipe its task networks are trained with
(``RECIPES``, :mod:`clbench.recipe`). Every key of ``PRESETS`` and every field of the recipe
(``lr``, ``epochs``, ``holdout_fraction``, ...) is a keyword of ``TNEN(...)``;
``agents/README.md`` says why each default is what it is."""

from __future__ import annotations

from typing import Any

from agents.tnen.chunks import LATENT_BITS
from clbench.quantize import DTYPES
from clbench.recipe import DEFAULT, FIELDS, Recipe

# How each preset trains its task networks. "default": exactly the shared recipe every
# baseline trains with, so TN+EN's TNs and `independent`'s networks get one budget.
# "paper": the authors' SGD (lr 0.01, momentum 0.5) for a fixed 3 epochs on all training
# data; batch 64 is ours (the paper is silent).
RECIPES: dict[str, Recipe] = {
    "default": DEFAULT,
    "paper": DEFAULT.replace(lr=0.01, momentum=0.5, batch_size=64, epochs=3,
                             holdout_fraction=0.0),
}

# Hyperparameters of the two presets. Every key is also a keyword of TNEN(...).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        # task networks
        "architecture": "reference",  # a spec for every task, a list per task id, or a dict
        "shared_init": True,          # every TN starts from one seeded init; EN stores deltas
                                      # (leaderboard/tuning/tnen_shared_init.json)
        "warm_start": False,          # start from the most recent skill of the same kind
        # encoding network
        "chunk_size": 320,
        "hidden_sizes": [],
        "latent_size": 160,
        "activation": "tanh",
        "penalty": "exact",           # contractive term: "exact" Jacobian norm or "closed_form"
        "contractive_weight": 1e-4,
        "en_lr": 1e-3,                # leaderboard/tuning/tnen.json (against 3e-4 and 1e-4)
        "normalize": True,            # scale each skill's vector to unit RMS before encoding
        "en_dtype": "int8",           # storage of the EN's weights (clbench.quantize.DTYPES)
        "latent_bits": 4,             # latents stored on a grid of 2**bits - 1 levels (or 16/32)
        "latent_noise": True,         # train the EN with that grid's rounding noise
        "keep_codes": True,           # a recalled chunk keeps its code unless re-encoding helps
                                      # (leaderboard/tuning/tnen_keep_codes.json)
        "refine_epochs": 0,           # new skill below its TN's accuracy: train its codes
        "refine_lr": 0.01,            # (Adam, the recipe's batch size, straight-through
        "max_refinements": 10,        # rounding), the EN held fixed, at most this often;
                                      # 0 epochs: off (leaderboard/tuning/tnen_rounding.json
                                      # chose refine_epochs and latent_noise together)
        "recall_weight": 10.0,        # weight of "old codes still decode to their recall"
        # consolidation and its stopping rule
        "en_max_steps": 800,          # EN iterations at most
        "en_check_every": 10,
        "en_patience": 5,             # checks without progress before training stops
                                      # (leaderboard/tuning/tnen_patience.json)
        "adam_step_per_skill": False,  # one iteration: one step per skill, or one step on
        "replay_chunks": 256,         # the new chunks + this many recalled (None: all)
        "min_cosine": 0.96,           # every skill, against its target
        "max_relative_error": 0.25,   # new skill against its TN
        "max_recall_drift": 0.1,      # recalled skills against their recall
        "accuracy_tolerance": 0.005,  # new skill: held-out accuracy vs its TN
    },
    "paper": {
        "architecture": "reference",
        "shared_init": False,
        "warm_start": False,
        "chunk_size": 21432,
        "hidden_sizes": [2000],
        "latent_size": 20,
        "activation": "tanh",
        "penalty": "closed_form",
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
        "en_patience": None,
        "adam_step_per_skill": True,
        "replay_chunks": None,
        "min_cosine": 0.99,
        "max_relative_error": None,
        "max_recall_drift": None,
        "accuracy_tolerance": None,
    },
}


def resolve(preset: str, settings: dict[str, Any]) -> tuple[dict[str, Any], Recipe]:
    """The settings and the TN recipe of ``preset`` with ``settings`` (``TNEN``'s keywords)
    applied: recipe fields override the preset's recipe, other keys its settings."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(settings) - set(PRESETS[preset]) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown TNEN setting(s) {', '.join(unknown)}; valid settings: "
                        f"{', '.join(PRESETS[preset])}, and the training recipe's "
                        f"{', '.join(FIELDS)}")
    config = {**PRESETS[preset], **{k: v for k, v in settings.items() if k not in FIELDS}}
    recipe = RECIPES[preset].replace(**{k: v for k, v in settings.items() if k in FIELDS})
    check_config(config, recipe)
    return config, recipe


def check_config(config: dict[str, Any], recipe: Recipe) -> None:
    """Reject settings that cannot work together, naming the value and the remedy."""
    if config["en_dtype"] not in DTYPES:
        raise ValueError(f"en_dtype={config['en_dtype']!r}: choose one of {', '.join(DTYPES)}")
    if config["latent_bits"] not in LATENT_BITS:
        raise ValueError(f"latent_bits={config['latent_bits']!r}: choose one of "
                         f"{', '.join(map(str, LATENT_BITS))}")
    patience = config["en_patience"]
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int)
                                 or patience < 1):
        raise ValueError(f"en_patience={patience!r}: give a whole number of checks >= 1, or "
                         "None to train until the stopping rule holds or en_max_steps")
    needs_held_out = {key: config[key] for key, used in (
        ("accuracy_tolerance", config["accuracy_tolerance"] is not None),
        ("refine_epochs", bool(config["refine_epochs"]))) if used}
    if needs_held_out and recipe.holdout_fraction == 0:
        named = " and ".join(f"{key}={value!r}" for key, value in needs_held_out.items())
        verb = "judges" if len(needs_held_out) == 1 else "judge"
        raise ValueError(f"{named} {verb} held-out accuracy, but holdout_fraction=0 holds "
                         "nothing out; set holdout_fraction > 0 (e.g. 0.1) or set "
                         "accuracy_tolerance=None and refine_epochs=0")
