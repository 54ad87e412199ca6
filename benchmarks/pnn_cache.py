"""PNN's frozen-column activation cache: one task's learn seconds and FLOPs with and without it,
as columns accumulate.

A PNN learns the tasks of TupleMNIST5k (50 tasks) in order, with the cache. Before learning
task k for each k of ``--at``, the agent is copied, and the same learn of task k runs from
those copies with the cache (the default) and without it (``ACTIVATION_CACHE_BYTES = 0``:
every step runs the k frozen columns again), in interleaved rounds; the FLOPs of each are
counted in one more, untimed run. The two learns give the same weights up to float rounding
(``tests/test_baselines_a.py``). One thread by default (--threads).

    python benchmarks/pnn_cache.py --at 10 25 49
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import host, interleaved, markdown, median, stream_tasks

import baselines.pnn as pnn
from clbench.costs import count_flops

STREAM = "clbench/TupleMNIST5k-v0"


def learn_copy(agent: pnn.PNN, task, cache_bytes: int) -> None:
    """Learn ``task`` on a copy of ``agent`` with the given cache budget."""
    saved, pnn.ACTIVATION_CACHE_BYTES = pnn.ACTIVATION_CACHE_BYTES, cache_bytes
    try:
        torch.manual_seed(task.id)
        copy.deepcopy(agent).learn(task)
    finally:
        pnn.ACTIVATION_CACHE_BYTES = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", nargs="+", type=int, default=[10, 25, 49],
                        help="task ids to time (0-based: task k has k frozen columns)")
    parser.add_argument("--n-tasks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = [task.for_agent() for task in stream_tasks(STREAM, args.seed, n_tasks=args.n_tasks)]
    variants = {"cache": pnn.ACTIVATION_CACHE_BYTES, "no cache": 0}
    agent, rows = pnn.PNN(), []
    for k, task in enumerate(tasks[: max(args.at) + 1]):
        if k in args.at:
            calls = {name: (lambda b=b, t=task: learn_copy(agent, t, b))
                     for name, b in variants.items()}
            seconds = {name: median(s) for name, s in interleaved(calls, args.rounds).items()}
            flops = {name: count_flops(call) for name, call in calls.items()}
            rows.append([k, len(task.y_train),
                         *(f"{seconds[name]:.2f}" for name in variants),
                         f"{seconds['no cache'] / seconds['cache']:.1f}",
                         *(f"{flops[name] / 1e9:.1f}" for name in variants)])
            print(f"task {k} done", flush=True)
        torch.manual_seed(task.id)
        agent.learn(task)
    print(f"\nPNN on {STREAM} n_tasks={args.n_tasks}, seed {args.seed}, recipe defaults, "
          f"{args.threads} thread(s), median of {args.rounds} interleaved rounds; {host()}\n")
    print(markdown(["task", "examples", "learn s, cache", "learn s, no cache", "speed-up",
                    "GFLOP, cache", "GFLOP, no cache"], rows))


if __name__ == "__main__":
    main()
