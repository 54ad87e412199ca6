"""Sweep one hyperparameter of an agent on one stream: mean ACC, BWT and forgetting over seeds.

    python benchmarks/sweep.py --agent ewc --arg ewc_lambda --values 1 10 100 1000 \\
        --env clbench/SplitMNIST5k-v0 --seeds 10 11 12

prints a Markdown table with one row per value (means over the seeds, and the spread of ACC
as min-max). ``--agent-arg k=v`` fixes other constructor arguments. Each run goes through
``clbench.evaluate`` without FLOP counting or the fresh-process check, since a sweep compares
accuracies; learn seconds are reported but are only as steady as the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics

from clbench.cli import parse_assignments
from clbench.harness import evaluate


def parse_value(text: str):
    """``"100"`` -> 100, ``"true"`` -> True, anything that is not JSON stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def sweep(agent: str, arg: str, values: list, env: str, seeds: list[int],
          fixed: dict) -> list[dict]:
    """One row per value: the agent's mean figures over ``seeds`` on ``env``."""
    rows = []
    for value in values:
        results = [evaluate(agent, env, seed=seed, device="cpu",
                            agent_kwargs={**fixed, arg: value}, flops=False, verify=False)
                   for seed in seeds]
        accs = [r.metrics["acc"] for r in results]
        rows.append({
            "value": value,
            "acc": statistics.mean(accs),
            "acc_range": (min(accs), max(accs)),
            "bwt": statistics.mean(r.metrics["bwt"] for r in results),
            "forgetting": statistics.mean(r.metrics["forgetting"] for r in results),
            "learn_seconds": statistics.mean(sum(r.costs["learn_seconds"]) for r in results),
        })
    return rows


def markdown(arg: str, rows: list[dict]) -> str:
    lines = [f"| {arg} | ACC | ACC min-max | BWT | forgetting | learn s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        low, high = row["acc_range"]
        lines.append(f"| {row['value']} | {row['acc']:.4f} | {low:.3f}-{high:.3f} | "
                     f"{row['bwt']:+.4f} | {row['forgetting']:.4f} | {row['learn_seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", required=True, help="agent name or module:Class")
    parser.add_argument("--arg", required=True, help="the constructor argument to sweep")
    parser.add_argument("--values", nargs="+", required=True, type=parse_value)
    parser.add_argument("--env", default="clbench/SplitMNIST5k-v0")
    parser.add_argument("--seeds", nargs="+", type=int, default=[10, 11, 12])
    parser.add_argument("--agent-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="another constructor argument, fixed for every run")
    args = parser.parse_args()
    fixed = parse_assignments(args.agent_arg, "--agent-arg")
    rows = sweep(args.agent, args.arg, args.values, args.env, args.seeds, fixed)
    print(f"{args.agent} on {args.env}, seeds {args.seeds}, fixed {fixed or '-'}")
    print(markdown(args.arg, rows))


if __name__ == "__main__":
    main()
