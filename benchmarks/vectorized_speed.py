"""(c) K networks trained at once (`clbench.vectorized.train_together`) vs one by one.

K reference MNIST nets, each on its own task of `clbench/TupleMNIST5k-v0` (K tuple tasks),
1 epoch of SGD (lr 0.01, momentum 0.5) at each batch size asked for; the one-by-one side is
`train_one_by_one`, the plain loop with the same fast training primitives. Both take turns
in this process; the table gives the median of the rounds, the speed-up, and the largest
weight difference between the two ends. One thread by default (--threads).

    python benchmarks/vectorized_speed.py --k 32 --batch-sizes 64 16 8
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import interleaved, markdown, median, stream_tasks

from clbench.nets import reference_net
from clbench.vectorized import train_one_by_one, train_together

LEARNING_RATE, MOMENTUM = 0.01, 0.5


def measure(tasks, initial, batch_size: int, rounds: int) -> list[object]:
    """One row of table (c): K nets from ``initial`` trained both ways at ``batch_size``."""
    ends = {}

    def run(train, name: str) -> None:
        nets = copy.deepcopy(initial)
        generators = [torch.Generator().manual_seed(i) for i in range(len(nets))]
        train(nets, tasks, 1, LEARNING_RATE, MOMENTUM, batch_size, generators)
        ends[name] = nets

    seconds = interleaved({"one by one": lambda: run(train_one_by_one, "one by one"),
                           "together": lambda: run(train_together, "together")}, rounds)
    alone_s, together_s = median(seconds["one by one"]), median(seconds["together"])
    difference = max((p - q).abs().max().item()
                     for a, b in zip(ends["one by one"], ends["together"], strict=True)
                     for p, q in zip(a.parameters(), b.parameters(), strict=True))
    steps = sum(-(-len(task.y_train) // batch_size) for task in tasks)
    return [batch_size, steps, f"{alone_s:.2f}", f"{together_s:.2f}",
            f"{alone_s / together_s:.2f}x", f"{difference:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 16, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tasks = [task.for_agent() for task in
             stream_tasks("clbench/TupleMNIST5k-v0", 0, n_tasks=args.k)]
    torch.manual_seed(0)
    initial = [reference_net(tasks[0].input_shape) for _ in tasks]
    rows = [measure(tasks, initial, batch_size, args.rounds) for batch_size in args.batch_sizes]
    print(f"\n(c) K = {args.k} MNIST reference nets on {args.k} TupleMNIST5k tasks "
          f"({sum(len(t.y_train) for t in tasks)} train examples in all), 1 epoch, "
          f"{args.threads} thread(s), median of {args.rounds} interleaved rounds\n")
    print(markdown(["batch", "network steps", "one by one s", "together s", "speed-up",
                    "max weight difference"], rows))


if __name__ == "__main__":
    main()
