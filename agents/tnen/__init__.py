"""TN+EN, clbench's reference agent (``agents.tnen:TNEN``), and the paper's experiments
(``agents.tnen.paper``). The modules follow PAPER.md section by section: ``task_network``
(the TN), ``chunks`` (flatten, chunk, pack), ``encoder`` (the EN and its contractive
penalty), ``consolidation`` (EN training and its stopping rule), ``presets`` (the two
presets and the TN recipe of each), ``agent`` (the agent)."""

from agents.tnen.agent import TNEN, PendingSkill
from agents.tnen.encoder import ContractiveAutoencoder
from agents.tnen.presets import PRESETS, RECIPES

__all__ = ["PRESETS", "RECIPES", "TNEN", "ContractiveAutoencoder", "PendingSkill"]
