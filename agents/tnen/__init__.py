"""TN+EN, clbench's reference agent (``agents.tnen:TNEN``), and the paper's experiments
(``agents.tnen.paper``). The modules follow PAPER.md section by section: ``task_network``
(the TN), ``chunks`` (flatten, chunk, pack), ``encoder`` (the EN and its contractive
penalty), ``consolidation`` (EN training and its stopping rule), ``agent`` (the agent and
its presets)."""

from agents.tnen.agent import PRESETS, TNEN, PendingSkill, check_config
from agents.tnen.chunks import (
    LATENT_BITS,
    from_chunks,
    pack_latents,
    quantize_latents,
    to_chunks,
    unpack_latents,
)
from agents.tnen.encoder import ContractiveAutoencoder
from agents.tnen.task_network import (
    accuracy,
    build_task_network,
    flatten_parameters,
    holdout_split,
    load_parameters,
    seeded_task_network,
    task_seed,
    train_task_network,
)

__all__ = [
    "LATENT_BITS", "PRESETS", "TNEN", "ContractiveAutoencoder", "PendingSkill", "accuracy",
    "build_task_network", "check_config", "flatten_parameters", "from_chunks",
    "holdout_split", "load_parameters", "pack_latents", "quantize_latents",
    "seeded_task_network", "task_seed", "to_chunks", "train_task_network", "unpack_latents",
]
