"""TN+EN, clbench's reference agent (``agents.tnen:TNEN``), and the paper's experiments
(``agents.tnen.paper``). The modules follow PAPER.md section by section: ``task_network``
(the TN), ``chunks`` (flatten, chunk, pack), ``encoder`` (the EN and its contractive
penalty), ``consolidation`` (EN training and its stopping rule), ``agent`` (the agent and
its presets)."""

from agents.tnen.agent import PRESETS, TNEN, PendingSkill
from agents.tnen.encoder import ContractiveAutoencoder

__all__ = ["PRESETS", "TNEN", "ContractiveAutoencoder", "PendingSkill"]
