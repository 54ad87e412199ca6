"""TN+EN against its goals: accuracy next to fp32 task networks, storage, integration cost.

Drives ``agents/tnen`` (TNEN) through a stream the way the harness does (after every ``learn``
the state is serialised, its bytes counted, and a fresh agent loaded from it carries on), and
beside it measures what the agent is compared with:

- the **original TN** of every task: ``TNEN.task_network`` trains exactly the network that
  ``learn`` trains and then encodes (same initialisation, data split and seed), kept in fp32;
  its test accuracy is the "independent fp32 TN per task trained the same way";
- the **reconstruction**: the final state's prediction accuracy on every task's test set;
- **storage**: state bytes after each task next to ``k`` fp32 reference networks and ``k``
  int8 copies (the tensors ``clbench.quantize`` stores for ``baselines/independent.py``);
- **learn FLOPs** of the tasks named in ``--flops-at`` (that ``learn`` runs under
  ``clbench.costs.count_flops``; FLOPs depend on shapes, not on how fast the machine is). With
  ``--flops-at all`` every task is counted and the summary adds the mean over the ten tasks
  up to k = 10, 50, 100: how many EN iterations one skill needs varies from tens to the cap,
  so a single task's figure says more about that task than about the growth with k.

    python benchmarks/tnen_goals.py --env clbench/OneVsRestMNIST5k-v0
    python benchmarks/tnen_goals.py --env clbench/TupleMNIST5k-v0 --n-tasks 100 \\
        --flops-at all
    python benchmarks/tnen_goals.py --env clbench/SplitMNIST5k-v0 \\
        --agent-arg 'architecture=["reference","mlp:64","reference","mlp:64","reference"]'
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import gymnasium
import torch

import clbench  # noqa: F401  (registers the environments)
from agents.tnen import TNEN
from agents.tnen.task_network import accuracy
from clbench import costs
from clbench.cli import parse_assignments
from clbench.harness import build_agent, serialize_state
from clbench.nets import count_parameters, reference_net
from clbench.quantize import quantize

WINDOW_ENDS = (10, 50, 100, 333)


def run(env_id: str, n_tasks: int | None, agent_kwargs: dict, seed: int,
        flops_at: set[int] | None) -> dict:
    """One pass over the stream; ``flops_at``: the k whose learn is counted (None: all)."""
    env_kwargs = {} if n_tasks is None else {"n_tasks": n_tasks}
    env = gymnasium.make(env_id, backend="torch", disable_env_checker=True,
                         **env_kwargs).unwrapped
    env.reset(seed=seed)
    device = torch.device("cpu")
    kwargs = {"seed": seed, **agent_kwargs}
    agent, rows = TNEN(device, **kwargs), []
    for task_id in range(env.n_tasks):
        task = env.task(task_id)
        original, _ = agent.task_network(task)
        original_accuracy = accuracy(original, task.x_test, task.y_test, task.dataset)
        k = task_id + 1
        start = time.perf_counter()
        learn = functools.partial(agent.learn, task)
        counted = flops_at is None or k in flops_at
        flops = costs.count_flops(learn) if counted else None
        if flops is None:
            learn()
        seconds = time.perf_counter() - start
        figures = agent.metrics()
        blob = serialize_state(agent.state_dict())
        agent = build_agent(TNEN, kwargs, device, blob)
        parameters = count_parameters(original)
        int8_bytes = sum(t.numel() * t.element_size() for t in quantize(original, "int8").values())
        rows.append({
            "k": k, "task": task.name, "architecture": figures["architecture"],
            "parameters": parameters, "int8_bytes": int8_bytes,
            "original_accuracy": original_accuracy,
            "state_bytes": len(blob), "learn_seconds": seconds, "learn_flops": flops,
            "en_iterations": figures["en_iterations"],
            "stopping_rule_met": figures["stopping_rule_met"],
        })
        print(f"  task {k:3d}: original {original_accuracy:.3f}, state {len(blob):,} B, "
              f"EN iterations {figures['en_iterations']}, {seconds:.1f} s"
              + (f", {flops / 1e9:.1f} GFLOP" if flops else ""), flush=True)
    for task_id, row in enumerate(rows):
        task = env.task(task_id)
        predicted = agent.predict(task.x_test, task_id)
        row["final_accuracy"] = (predicted == task.y_test).double().mean().item()
    return {"env": env_id, "n_tasks": env.n_tasks, "seed": seed, "agent_kwargs": agent_kwargs,
            "rows": rows}


def summarize(report: dict) -> dict:
    rows = report["rows"]
    fp32 = int8 = 0
    smallest_k = None
    for row in rows:
        fp32 += 4 * row["parameters"]
        int8 += row["int8_bytes"]
        row["fp32_total_bytes"], row["int8_total_bytes"] = fp32, int8
        if smallest_k is None and row["state_bytes"] < fp32:
            smallest_k = row["k"]
    original = statistics.fmean(r["original_accuracy"] for r in rows)
    final = statistics.fmean(r["final_accuracy"] for r in rows)
    gaps = [abs(r["original_accuracy"] - r["final_accuracy"]) for r in rows]
    return {
        "acc_original_fp32": original, "acc_tnen": final,
        "acc_gap_points": 100 * (original - final),
        "mean_abs_gap_points": 100 * statistics.fmean(gaps), "max_abs_gap_points": 100 * max(gaps),
        "smallest_k_below_fp32": smallest_k,
        "final_bytes": rows[-1]["state_bytes"], "fp32_bytes": fp32, "int8_bytes": int8,
        "compression_vs_fp32": fp32 / rows[-1]["state_bytes"],
        "compression_vs_int8": int8 / rows[-1]["state_bytes"],
        "learn_flops": {r["k"]: r["learn_flops"] for r in rows if r["learn_flops"]},
        "learn_flops_mean_of_ten": {
            k: statistics.fmean(r["learn_flops"] for r in rows[k - 10 : k])
            for k in WINDOW_ENDS if k <= len(rows)
            and all(r["learn_flops"] for r in rows[k - 10 : k])},
        "en_iterations_mean_of_ten": {
            k: statistics.fmean(r["en_iterations"] for r in rows[k - 10 : k])
            for k in WINDOW_ENDS if k <= len(rows)},
        "stopping_rule_met": sum(r["stopping_rule_met"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="clbench/OneVsRestMNIST5k-v0")
    parser.add_argument("--n-tasks", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agent-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--flops-at", default="",
                        help="comma-separated task counts k, or 'all'")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    flops_at = None if args.flops_at == "all" else {
        int(k) for k in args.flops_at.split(",") if k}
    agent_kwargs = parse_assignments(args.agent_arg, "--agent-arg")
    start = time.perf_counter()
    report = run(args.env, args.n_tasks, agent_kwargs, args.seed, flops_at)
    report["summary"] = summary = summarize(report)
    report["wall_seconds"] = time.perf_counter() - start
    reference = 4 * count_parameters(reference_net((1, 28, 28)))
    print(f"{args.env} ({report['n_tasks']} tasks), tnen {agent_kwargs or 'default'}, "
          f"seed {args.seed}, {report['wall_seconds']:.0f} s")
    print(f"  ACC: original fp32 TNs {summary['acc_original_fp32']:.4f}, tnen "
          f"{summary['acc_tnen']:.4f} (gap {summary['acc_gap_points']:+.2f} points)")
    print(f"  |original - reconstructed|: mean {summary['mean_abs_gap_points']:.2f} points, "
          f"max {summary['max_abs_gap_points']:.2f}")
    print(f"  state after {report['n_tasks']} tasks: {summary['final_bytes']:,} B; fp32 "
          f"networks {summary['fp32_bytes']:,} B ({summary['compression_vs_fp32']:.2f}x); int8 "
          f"copies {summary['int8_bytes']:,} B ({summary['compression_vs_int8']:.2f}x)")
    print(f"  smallest k with state < k fp32 networks: {summary['smallest_k_below_fp32']} "
          f"(MNIST reference net: {reference:,} B each)")
    print(f"  stopping rule met on {summary['stopping_rule_met']} of {report['n_tasks']} tasks")
    for k in WINDOW_ENDS:
        if k in summary["learn_flops"]:
            print(f"  learn FLOPs to integrate task {k}: {summary['learn_flops'][k] / 1e9:.1f} "
                  "GFLOP")
        if k in summary["learn_flops_mean_of_ten"]:
            print(f"    mean over tasks {k - 9}-{k}: "
                  f"{summary['learn_flops_mean_of_ten'][k] / 1e9:.1f} GFLOP")
        if k in summary["en_iterations_mean_of_ten"]:
            print(f"    EN iterations, mean over tasks {k - 9}-{k}: "
                  f"{summary['en_iterations_mean_of_ten'][k]:.0f}")
    if args.out:
        with open(args.out, "w") as stream:
            json.dump(report, stream, indent=1)


if __name__ == "__main__":
    main()
