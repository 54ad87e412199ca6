"""The ``clbench`` command line: ``run`` an agent on a stream, ``list`` what exists, ``table``
to compare result files; further commands (such as ``paper``, the reference agent's
experiments) plug in through the ``clbench.commands`` entry-point group, so that this package
imports no agent."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import gymnasium

import clbench  # noqa: F401  (registers the environments)
from clbench.agent import registered_agents
from clbench.devices import DEVICE_CHOICES
from clbench.harness import AgentError, evaluate
from clbench.results import Result, ResultFormatError, load_result

COMMAND_GROUP = "clbench.commands"


def parse_assignments(pairs: Sequence[str], option: str) -> dict:
    """``["epochs=2", "dtype=int8"]`` -> ``{"epochs": 2, "dtype": "int8"}`` (JSON values)."""
    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"clbench: {option} {pair!r} is not of the form key=value")
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key] = text
    return parsed


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def task_table(result: Result) -> str:
    """Per-task Markdown table of one run: accuracy when learned and at the end, costs."""
    lines = ["| task | name | acc when learned | acc at end | state bytes | learn s | "
             "learn GFLOP |", "|---:|---|---:|---:|---:|---:|---:|"]
    final = result.accuracy[-1] if result.accuracy else []
    for j, row in enumerate(result.accuracy):
        flops = result.costs["learn_flops"][j]
        lines.append(
            f"| {j} | {result.env['task_names'][j]} | {_fmt(row[j])} | "
            f"{_fmt(final[j] if j < len(final) else None)} | {result.storage['bytes'][j]:,} | "
            f"{_fmt(result.costs['learn_seconds'][j], 2)} | "
            f"{_fmt(None if flops is None else flops / 1e9, 2)} |")
    return "\n".join(lines)


def summary_table(results: Sequence[Result]) -> str:
    """One Markdown row per run: ACC, BWT, forgetting, storage, cost, status."""
    lines = ["| agent | env | seed | ACC | BWT | forgetting | retained | final state bytes | "
             "compression | learn s (total) | learn GFLOP (total) | status | sealed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for result in results:
        m, flops = result.metrics, result.costs["learn_flops"]
        total_flops = None if not flops or None in flops else sum(flops) / 1e9
        ratio = result.storage["compression"][-1] if result.storage["compression"] else None
        lines.append(
            f"| {result.agent['name']} | {result.env['id']} | {result.seed} | {_fmt(m.get('acc'))}"
            f" | {_fmt(m.get('bwt'))} | {_fmt(m.get('forgetting'))} | "
            f"{m.get('retained', '-')}/{len(result.accuracy)} | "
            f"{result.storage['bytes'][-1] if result.storage['bytes'] else 0:,} | "
            f"{_fmt(ratio, 2)}x"
            f" | {_fmt(sum(result.costs['learn_seconds']), 2)} | {_fmt(total_flops, 1)} | "
            f"{result.status} | {'yes' if result.sealed else 'no'} |")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path("runs") / (
        f"{args.agent.replace(':', '_').replace('/', '_')}_{args.env.split('/')[-1]}"
        f"_s{args.seed}.json")
    try:
        result = evaluate(
            args.agent, args.env, seed=args.seed, device=args.device,
            agent_kwargs=parse_assignments(args.agent_arg, "--agent-arg"),
            env_kwargs=parse_assignments(args.env_arg, "--env-arg"),
            out=out, progress_bars=not args.quiet, flops=not args.no_flops,
            seal=not args.no_seal, learn_timeout=args.learn_timeout,
        )
    except AgentError as error:
        failure = error.result.failure if error.result is not None else None
        if failure and failure.get("traceback"):
            print(f"the agent's traceback:\n{failure['traceback']}", file=sys.stderr, end="")
        print(f"clbench: {error}", file=sys.stderr)
        print(f"clbench: the finished tasks are kept in {out} (status failed)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        signal_name = getattr(interrupt, "signal_name", "SIGINT")
        print(f"clbench: interrupted by {signal_name}; the finished tasks are kept in {out} "
              "(status interrupted)", file=sys.stderr)
        return 143 if signal_name == "SIGTERM" else 130
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    print(task_table(result))
    print()
    print(summary_table([result]))
    print(f"\nresult: {out}")
    if result.status != "complete":
        print(f"clbench: {result.error}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("environments:")
    for env_id in sorted(i for i in gymnasium.registry if i.startswith("clbench/")):
        print(f"  {env_id}")
    print("agents:")
    for name, target in sorted(registered_agents().items()):
        print(f"  {name:14s} {target}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    try:
        results = [load_result(path) for path in args.results]
    except (ResultFormatError, FileNotFoundError) as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    print(summary_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an agent through a task stream")
    run.add_argument("--env", required=True, help="environment id, e.g. clbench/SplitMNIST5k-v0")
    run.add_argument("--agent", required=True,
                     help="registered agent name (see `clbench list`), module:Class or "
                          "file.py:Class")
    run.add_argument("--agent-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="agent constructor argument (repeatable; values parsed as JSON)")
    run.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="environment make() argument, e.g. n_tasks=10 (repeatable)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    run.add_argument("--out", help="result file (default runs/<agent>_<env>_s<seed>.json)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--no-flops", action="store_true",
                     help="skip counting FLOPs: no replay of each learn, so reproducibility "
                          "is not checked")
    run.add_argument("--no-seal", action="store_true",
                     help="run the agent in this process (debugging: faster to iterate, "
                          "nothing enforced, the result says unsealed)")
    run.add_argument("--learn-timeout", type=float, metavar="SECONDS",
                     help="kill a learn call that runs longer (the run fails, naming the task)")
    run.set_defaults(handler=cmd_run)

    listing = commands.add_parser("list", help="list environments and agents")
    listing.set_defaults(handler=cmd_list)

    table = commands.add_parser("table", help="summary table of result files")
    table.add_argument("results", nargs="+", help="result JSON files")
    table.set_defaults(handler=cmd_table)

    for plugin in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        plugin.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
