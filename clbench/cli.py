"""The ``clbench`` command line: ``run`` an agent on a stream, ``list`` what exists, ``table``
to compare result files; further commands (such as ``paper``, the reference agent's
experiments) plug in through the ``clbench.commands`` entry-point group, so that this package
imports no agent.

Every error ends in one line on stderr, never a traceback (``--debug`` shows it), and an exit
code: 2 for a usage error (what was typed: options, ids, arguments, seeds, impossible streams,
result files given to read), 1 for a run that could not finish (an agent's failure, data
files missing or not the published ones, an output folder that cannot be written).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import gymnasium

import clbench  # noqa: F401  (registers the environments)
from clbench.agent import agent_arguments, load_agent_class, registered_agents
from clbench.checkpoint import INDEX, check_not_held, default_out, folder_for
from clbench.data import DatasetIntegrityError, DatasetNotFoundError
from clbench.devices import DEVICE_CHOICES
from clbench.env.registration import check_env_kwargs
from clbench.harness import AgentError, evaluate
from clbench.metrics import check_eval_every, schedule_label
from clbench.results import Result, load_result

COMMAND_GROUP = "clbench.commands"
MAX_SEED = 2**63 - 1
USAGE, RUN_FAILURE = 2, 1


class UsageError(ValueError):
    """What the user typed cannot work; the CLI prints it in one line and exits 2."""


def parse_assignments(pairs: Sequence[str], option: str) -> dict:
    """``["epochs=2", "dtype=int8"]`` -> ``{"epochs": 2, "dtype": "int8"}`` (JSON values)."""
    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {pair!r} is not of the form key=value")
        try:
            parsed[key] = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            parsed[key] = text
    return parsed


def assignment_text(key: str, value: Any) -> str:
    """``key=value`` as :func:`parse_assignments` reads it back: a plain word (``int4``)
    bare, any other value as JSON (``true``, ``0.01``, ``"a,b"``, ``"true"``)."""
    if isinstance(value, str) and re.fullmatch(r"[\w.+\-/:]+", value):
        try:
            json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def seed_value(text: str) -> int:
    """argparse type of ``--seed``: an integer from 0 to 2**63 - 1."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{seed} is outside 0 to 2**63 - 1")
    return seed


def eval_every_value(text: str) -> int:
    """argparse type of ``--eval-every``: a whole number of tasks >= 1."""
    try:
        return check_eval_every(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number >= 1; give N to evaluate every task seen after "
            "every N-th task and the last (1, the default: after every task)") from None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _cell(str(value))


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, line breaks as spaces."""
    return " ".join(text.replace("|", "\\|").split())


def task_table(result: Result) -> str:
    """Per-task Markdown table of one run: accuracy when learned and at the end, costs."""
    lines = ["| task | name | acc when learned | acc at end | state bytes | learn s | "
             "learn GFLOP |", "|---:|---|---:|---:|---:|---:|---:|"]
    final = result.accuracy[-1] if result.accuracy else []
    for j, row in enumerate(result.accuracy):
        flops = result.costs["learn_flops"][j]
        lines.append(
            f"| {j} | {_cell(result.env['task_names'][j])} | {_fmt(row[j])} | "
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
        status = ", ".join(filter(None, (result.status, schedule_label(result.eval_every))))
        lines.append(
            f"| {_cell(result.agent['name'])} | {_cell(result.env['id'])} | {result.seed} | "
            f"{_fmt(m.get('acc'))}"
            f" | {_fmt(m.get('bwt'))} | {_fmt(m.get('forgetting'))} | "
            f"{_fmt(m.get('retained'))}/{len(result.accuracy)} | "
            f"{result.storage['bytes'][-1] if result.storage['bytes'] else 0:,} | "
            f"{_fmt(ratio, 2)}x"
            f" | {_fmt(sum(result.costs['learn_seconds']), 2)} | {_fmt(total_flops, 1)} | "
            f"{_cell(status)} | {'yes' if result.sealed else 'no'} |")
    return "\n".join(lines)


def _check_output(out: Path) -> None:
    """Before any work: ``--out`` must name a file in a folder this process can write."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file path such as {out / 'run.json'}")
    folder = out.absolute().parent
    while not folder.exists():  # probe the nearest folder that exists; create nothing yet
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(error.errno, f"cannot write results in {folder}: "
                                   f"{error.strerror or error}") from None


def cmd_run(args: argparse.Namespace) -> int:
    agent_kwargs = parse_assignments(args.agent_arg, "--agent-arg")
    env_kwargs = parse_assignments(args.env_arg, "--env-arg")
    for reserved, option in (("device", "--device"), ("backend", None)):
        if reserved in env_kwargs:
            raise UsageError(f"--env-arg {reserved}=...: " + (
                f"use {option}" if option else "the harness sets it"))
    check_env_kwargs(args.env, env_kwargs)
    out = Path(args.out) if args.out else default_out(args.agent, args.env, args.seed)
    _check_output(out)
    check_not_held(out)  # before anything is read or said about an earlier run of out
    already_complete = args.resume and _complete(out)
    if not args.resume and (folder_for(out) / INDEX).exists():
        print(f"clbench: starting afresh over the unfinished run {out} (--resume would "
              "continue it)", file=sys.stderr)
    try:
        result = evaluate(
            args.agent, args.env, seed=args.seed, device=args.device,
            agent_kwargs=agent_kwargs, env_kwargs=env_kwargs,
            out=out, progress_bars=not args.quiet, flops=not args.no_flops,
            seal=not args.no_seal, learn_timeout=args.learn_timeout, resume=args.resume,
            eval_every=args.eval_every,
        )
    except AgentError as error:
        failure = error.result.failure if error.result is not None else None
        if failure and failure.get("traceback"):
            print(f"the agent's traceback:\n{failure['traceback']}", file=sys.stderr, end="")
        print(f"clbench: {error}", file=sys.stderr)
        print(f"clbench: the finished tasks are kept in {out} (status failed)", file=sys.stderr)
        return RUN_FAILURE
    except KeyboardInterrupt as interrupt:
        signal_name = getattr(interrupt, "signal_name", "SIGINT")
        print(f"clbench: interrupted by {signal_name}; the finished tasks are kept in {out} "
              "(status interrupted)", file=sys.stderr)
        return 143 if signal_name == "SIGTERM" else 130
    print(task_table(result))
    print()
    print(summary_table([result]))
    print(f"\nresult: {out}")
    if already_complete:
        print(f"clbench: {out} was already complete; nothing was run", file=sys.stderr)
    if result.status != "complete":
        print(f"clbench: {result.error}", file=sys.stderr)
        return RUN_FAILURE
    return 0


def _complete(out: Path) -> bool:
    """Whether ``out`` is a valid complete result (evaluate checks it is this run's)."""
    try:
        return load_result(out).status == "complete"
    except ValueError:
        return False


def cmd_list(args: argparse.Namespace) -> int:
    print("environments:")
    for env_id in sorted(i for i in gymnasium.registry if i.startswith("clbench/")):
        print(f"  {env_id}")
    print("agents (name, class, constructor arguments and their defaults):")
    for name, target in sorted(registered_agents().items()):
        try:
            arguments = agent_arguments(load_agent_class(name))
            shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items()) or "none"
        except (ValueError, TypeError) as error:
            shown = f"(cannot be loaded: {error})"
        print(f"  {name:14s} {target}\n  {'':14s} {shown}")
    return 0


def result_files(paths: Sequence[str]) -> list[Path]:
    """The result files named: files as given, folders searched for ``*.json``."""
    files = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise UsageError(f"no result file or folder {name}")
        found = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        if not found:
            raise UsageError(f"{name} is a directory that holds no result files (*.json)")
        files += found
    return files


def cmd_table(args: argparse.Namespace) -> int:
    from clbench.leaderboard import aggregate

    files = result_files(args.results)
    results = [(path, load_result(path)) for path in files]  # each validated before use
    if args.runs:
        print(summary_table([result for _, result in results if result.accuracy]))
        left_out = [f"{path}: no task finished ({result.status}: {result.error})"
                    for path, result in results if not result.accuracy]
    else:
        runs = [aggregate.Run(str(path), result) for path, result in results
                if result.status == "complete"]
        rows, left_out = aggregate.group(runs, lambda run: aggregate.stream_label(run.result))
        left_out += [f"{path}: status {result.status} after {len(result.accuracy)}/"
                     f"{len(result.env['task_names'])} tasks: {result.error}"
                     for path, result in results if result.status != "complete"]
        print(aggregate.render(rows, args.format))
    for line in left_out:
        print(f"left out: {line}", file=sys.stderr)
    return 0


def _add_plugins(commands: argparse._SubParsersAction, wanted: str | None) -> None:
    """The plug-in commands: the one asked for is loaded and adds its own parser; the others
    are listed by name only, so running one command imports no other plug-in's code (the
    ``paper`` command lives in an agent's package, which ``clbench run`` must not import)."""
    for plugin in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        if plugin.name == wanted:
            plugin.load()(commands)
        else:
            commands.add_parser(plugin.name, add_help=False,
                                help=f"plug-in command ({plugin.value}); see "
                                     f"`clbench {plugin.name} -h`")


def _command_in(argv: Sequence[str]) -> str | None:
    """The command an argument list asks for: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
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
    run.add_argument("--seed", type=seed_value, default=0, help="0 to 2**63 - 1 (default 0)")
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
    run.add_argument("--eval-every", type=eval_every_value, default=1, metavar="N",
                     help="evaluate every task seen only after every N-th task and the last; "
                          "after the others only the task just learned (long streams: far "
                          "fewer predictions; ACC and BWT stay exact, skipped entries of R "
                          "are null; default 1, the full matrix)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run of --out from its last finished task, from the "
                          "checkpoint kept beside it (<out>.ckpt/); refused when the env, "
                          "agent, arguments, seed, device, flags or versions differ; a "
                          "complete run is left as it is")
    run.set_defaults(handler=cmd_run)

    listing = commands.add_parser("list", help="list environments and agents")
    listing.set_defaults(handler=cmd_list)

    table = commands.add_parser(
        "table", help="compare result files: one row per stream x agent x arguments, "
                      "mean ± std over seeds")
    table.add_argument("results", nargs="+", help="result JSON files or folders of them")
    table.add_argument("--format", default="md", choices=("md", "csv", "latex"),
                       help="md (default), csv (mean, std and 95%% interval of every figure) "
                            "or latex")
    table.add_argument("--runs", action="store_true",
                       help="one Markdown row per file instead (no grouping)")
    table.set_defaults(handler=cmd_table)

    _add_plugins(commands, _command_in(argv))
    debug_help = "show the full traceback of an error"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for command in commands.choices.values():  # `clbench run --debug` works as well
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=debug_help)
    return parser


def exit_code(error: BaseException) -> int:
    """2 for a usage error, 1 for a run that could not finish (see the module docstring)."""
    if isinstance(error, DatasetNotFoundError | DatasetIntegrityError | AgentError):
        return RUN_FAILURE
    if isinstance(error, ValueError | TypeError | LookupError | gymnasium.error.Error):
        return USAGE  # UsageError, ResultFormatError, bad ids, kwargs, streams
    return RUN_FAILURE  # OSError (unwritable or full output folder) and anything unforeseen


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("clbench: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        if isinstance(error, OSError) and error.strerror:
            message = error.strerror + (f": {error.filename}" if error.filename else "")
        print(f"clbench: {message}", file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
