"""Untimed CPU: how much CPU honest agents' sealed calls spend beyond the seconds they report.

The harness fails a call whose reported seconds, on every core the run may use, cannot hold
the CPU time the kernel counted for its worker (``clbench.sealed.workers.check_seconds``),
with an allowance for the rest of the call (starting the worker, building the agent, its
state). This prints, per agent, the largest and median CPU seconds its timed calls spent
beyond their reported seconds (CPU - reported seconds: what the allowance must cover), and
the smallest margin left under the allowance, over every learn and predict of a run.

    python benchmarks/untimed_cpu.py --agents naive,tnen,replay,pnn,ewc,joint
"""

from __future__ import annotations

import argparse
import os
import statistics

import clbench
import clbench.harness
from clbench.sealed.workers import check_seconds, untimed_allowance


def measure(agent: str, env_id: str, agent_kwargs: dict, env_kwargs: dict) -> list[tuple]:
    """(stage, reported seconds, CPU seconds, allowance) of every timed call of one run."""
    calls = []

    def watched(seconds, cpu, cores, stage, request_bytes=0, device_type="cpu"):
        if seconds is not None:
            calls.append((stage, seconds, cpu,
                          cores * seconds + untimed_allowance(cpu, request_bytes, device_type)))
        check_seconds(seconds, cpu, cores, stage, request_bytes, device_type)

    clbench.harness.check_seconds = watched
    try:
        clbench.evaluate(agent, env_id, seed=0, device="cpu", agent_kwargs=agent_kwargs,
                         env_kwargs=env_kwargs)
    finally:
        clbench.harness.check_seconds = check_seconds
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="naive,tnen,replay,pnn,ewc,joint")
    parser.add_argument("--env", default="clbench/SplitMNIST5k-v0")
    parser.add_argument("--epochs", type=int, default=2, help="per task, for agents that train")
    args = parser.parse_args()
    print(f"{args.env}, {os.cpu_count()} CPU cores; seconds of CPU per call")
    print(f"{'agent':<12} {'calls':>5} {'max beyond':>11} {'median beyond':>14} "
          f"{'least margin':>13}")
    for agent in args.agents.split(","):
        kwargs = {} if agent == "tnen" else {"epochs": args.epochs}
        calls = measure(agent, args.env, kwargs, {})
        beyond = [cpu - seconds for _, seconds, cpu, _ in calls]
        margin = min(limit - cpu for _, _, cpu, limit in calls)
        print(f"{agent:<12} {len(calls):>5} {max(beyond):>11.3f} "
              f"{statistics.median(beyond):>14.3f} {margin:>13.3f}")


if __name__ == "__main__":
    main()
