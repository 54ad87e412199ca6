"""The fresh-process check: evaluate a saved final state in a new interpreter.

Started by the harness as ``python -m clbench.verify`` when a run begins, with one JSON line
on stdin (agent name and kwargs, env id and kwargs, seed, device). It rebuilds the same
episode and skips to the last task without learning anything, then waits for a second line:
the path of the serialised final state (an empty line or a closed stdin ends it quietly). It
loads the state into a fresh agent, labels every query and prints one JSON line: the
accuracy row and the prediction seconds (prediction FLOPs are counted by the harness). It
runs at the lowest CPU priority, so that its start-up takes only CPU time the run
leaves idle; by the time the final state arrives the run is waiting, so the evaluation is
not slowed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import gymnasium
import torch

import clbench  # noqa: F401  (registers the environments)
from clbench import costs
from clbench.agent import load_agent_class
from clbench.devices import resolve_device
from clbench.harness import VERIFY_FLAG, build_agent, predict_queries


def main() -> None:
    os.environ[VERIFY_FLAG] = "1"
    if hasattr(os, "nice"):  # start-up overlaps learning: yield the CPU to the run
        os.nice(19)
    request = json.loads(sys.stdin.readline())
    device = resolve_device(request["device"])
    env = gymnasium.make(request["env_id"], **{**request["env_kwargs"], "device": str(device),
                                               "backend": "torch"}, disable_env_checker=True)
    obs, info = env.reset(seed=request["seed"])
    shapes = info["input_shapes"]
    for _ in range(len(shapes) - 1):
        obs, *_ = env.step(torch.zeros_like(obs["query_task_ids"]))
    cls = load_agent_class(request["agent"])
    state_path = sys.stdin.readline().strip()
    if not state_path:
        return
    agent = build_agent(cls, request["agent_kwargs"], device, Path(state_path).read_bytes())
    labels, seconds, _ = costs.timed(lambda: predict_queries(agent, obs, shapes, device), device)
    _, _, _, _, info = env.step(labels)
    print(json.dumps({"accuracies": [float(a) for a in info["accuracies"]],
                      "predict_seconds": seconds}))


if __name__ == "__main__":
    main()
