"""(b) Every baseline's learn seconds and FLOPs relative to `naive`, on the same streams.

Each agent is built in this process (no harness, no sealed workers), learns every task of the
stream in order from the same seed, and is timed over the sum of its `learn` calls; the
agents take turns, round after round, and the table gives the median of the rounds. FLOPs
are counted in one more, untimed run under `clbench.costs.count_flops`. All agents get the
same `epochs` (default 1). Streams: SplitMNIST5k and full SplitFashionMNIST where its data
is installed. One thread by default (--threads).

    python benchmarks/learn_cost.py --rounds 3
    python benchmarks/learn_cost.py --agents naive ewc replay,buffer_size=200 --streams \\
        clbench/SplitMNIST5k-v0
"""

from __future__ import annotations

import argparse
import time

import torch
from baselines_table import parse_agent
from timing import FASHION_STREAM, OFFLINE_STREAM, markdown, median, stream_tasks

from clbench.agent import load_agent_class
from clbench.costs import count_flops
from clbench.tasks import Task

AGENTS = ["naive", "ewc", "online_ewc", "si", "lwf", "replay,buffer_size=200", "agem",
          "independent", "joint", "pnn"]


def learn_stream(spec: str, tasks: list[Task], epochs: int, seed: int) -> float:
    """Build the agent, learn every task; return the seconds spent inside ``learn``."""
    name, kwargs = parse_agent(spec)
    torch.manual_seed(seed)
    agent = load_agent_class(name)(device="cpu", **{"epochs": epochs, **kwargs})
    seconds = 0.0
    for task in tasks:
        start = time.perf_counter()
        agent.learn(task)
        seconds += time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=AGENTS, metavar="NAME[,key=value...]")
    parser.add_argument("--streams", nargs="+", default=[OFFLINE_STREAM, FASHION_STREAM])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    agents = args.agents if "naive" in args.agents else ["naive", *args.agents]

    for env_id in args.streams:
        stream = stream_tasks(env_id, args.seed)
        if stream is None:
            print(f"skipped {env_id}: its data is not installed")
            continue
        tasks = [task.for_agent() for task in stream]
        timed = {spec: [] for spec in agents}
        for _ in range(args.rounds):
            for spec in agents:
                timed[spec].append(learn_stream(spec, tasks, args.epochs, args.seed))
        seconds = {spec: median(values) for spec, values in timed.items()}
        flops = {spec: count_flops(lambda spec=spec, tasks=tasks: learn_stream(
                     spec, tasks, args.epochs, args.seed)) for spec in agents}
        rows = [[spec, f"{seconds[spec]:.2f}", f"{seconds[spec] / seconds['naive']:.2f}",
                 f"{flops[spec] / 1e9:.1f}", f"{flops[spec] / flops['naive']:.2f}"]
                for spec in agents]
        print(f"\n(b) {env_id}: learn over {len(tasks)} tasks, {args.epochs} epoch(s), "
              f"{args.threads} thread(s), median of {args.rounds} interleaved rounds\n")
        print(markdown(["agent", "learn s", "s / naive", "learn GFLOP", "FLOPs / naive"], rows),
              flush=True)


if __name__ == "__main__":
    main()
