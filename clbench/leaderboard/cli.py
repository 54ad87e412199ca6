"""``clbench leaderboard list|run|build``, plugged into the CLI through the
``clbench.commands`` entry-point group."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clbench.devices import DEVICE_CHOICES


def _split(text: str | None, kind=str) -> list:
    return [kind(part) for part in text.split(",") if part.strip()] if text else []


def cmd_list(args: argparse.Namespace) -> int:
    from clbench.leaderboard.suites import (
        DESCRIPTIONS,
        SUITE_AGENTS,
        SUITES,
        default_agents,
    )
    from clbench.leaderboard.variants import resolve_spec

    for name, entries in SUITES.items():
        print(f"{name}: {DESCRIPTIONS[name]}")
        for entry in entries:
            problem = entry.unsupported_kwargs()
            note = f"  (not in this clbench: no {', '.join(problem)})" if problem else ""
            print(f"  {entry.label:45s} scenario {entry.scenario:6s} -> {entry.folder}{note}")
    print("default agents (a sweep without --agents; results folder after the arrow):")
    for text in default_agents():
        try:
            print(f"  {text:45s} -> {resolve_spec(text).folder}")
        except ValueError as error:
            print(f"  {text:45s} (cannot be run here: {error})")
    for suite, agents in SUITE_AGENTS.items():
        print(f"the {suite} suite's default agents: {','.join(agents)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from clbench.leaderboard import sweep
    from clbench.leaderboard.suites import default_agents, get_suite
    from clbench.leaderboard.variants import split_specs

    try:
        entries = get_suite(args.suite)
        if args.entry:
            entries = tuple(e for e in entries if e.folder in args.entry)
            if len(entries) != len(set(args.entry)):
                raise ValueError(f"--entry must name folders of the suite {args.suite!r}: "
                                 f"{', '.join(e.folder for e in get_suite(args.suite))}")
        if args.env_arg:
            from clbench.cli import parse_assignments

            overrides = parse_assignments(args.env_arg, "--env-arg")
            entries = tuple(entry.with_kwargs(overrides) for entry in entries)
        seeds = _split(args.seeds, int)
        agents = split_specs(args.agents) if args.agents is not None else default_agents(
            args.suite)
        if not agents:
            raise ValueError("--agents is empty; give agent specs or leave it out for the "
                             "default agents (see `clbench leaderboard list`)")
        plan = sweep.plan(args.suite, entries, agents, seeds, Path(args.results))
    except ValueError as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    for line in plan.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    for line in plan.unavailable:  # before any work: a sweep can take hours
        print(f"clbench: {line}", file=sys.stderr)
    print(f"{args.suite}: {len(plan.jobs)} runs to do, {len(plan.done)} already complete "
          f"in {args.results}", file=sys.stderr)
    if args.dry_run:
        for job in plan.jobs:
            print(f"{job.path}: {sweep.describe(job)}")
        return 1 if plan.unavailable else 0
    try:
        problems = sweep.sweep(plan.jobs, device=args.device, backend=args.backend,
                               workers=args.workers, threads=args.threads,
                               address=args.address, progress=not args.quiet)
    except ValueError as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clbench: interrupted; finished runs are kept, rerun the same command to do "
              "the rest", file=sys.stderr)
        return 130
    for line in problems:
        print(f"not complete: {line}", file=sys.stderr)
    return 1 if problems or plan.unavailable else 0


def cmd_build(args: argparse.Namespace) -> int:
    from clbench.leaderboard.build import build

    try:
        report = build(Path(args.results), Path(args.out),
                       readme=Path(args.readme) if args.readme else None,
                       allow_unsealed=args.allow_unsealed)
    except (ValueError, OSError) as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    for line in report.left_out:
        print(f"left out: {line}", file=sys.stderr)
    print(f"{len(report.rows)} rows from {sum(len(r.runs) for r in report.rows)} runs; "
          f"wrote {Path(args.out) / 'README.md'}, {Path(args.out) / 'index.html'} and "
          f"{sum(p.suffix == '.png' for p in report.written)} plots")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``clbench leaderboard`` to the CLI (the ``clbench.commands`` entry point)."""
    from clbench.leaderboard.build import DEFAULT_OUT
    from clbench.leaderboard.sweep import BACKENDS, DEFAULT_RESULTS

    board = commands.add_parser("leaderboard", help="suites, sweeps and the built leaderboard")
    sub = board.add_subparsers(dest="leaderboard_command", required=True)

    listing = sub.add_parser("list", help="the suites and their entries")
    listing.set_defaults(handler=cmd_list)

    run = sub.add_parser("run", help="run every (entry, agent, seed) of a suite not yet complete")
    run.add_argument("--suite", required=True, help="suite name (see `clbench leaderboard list`)")
    run.add_argument("--entry", action="append", default=[], metavar="FOLDER",
                     help="only this entry of the suite, by its folder name (repeatable)")
    run.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="change a make() kwarg of every entry, e.g. max_train_per_task=500 "
                          "(results go to distinct folders; repeatable)")
    run.add_argument("--agents", metavar="SPECS",
                     help="comma-separated agent specs: a name, or a name with constructor "
                          "arguments in brackets, e.g. 'naive,independent[dtype=int4,"
                          "delta=true]' (quote it in a shell); each variant gets its own "
                          "results folder (default: the suite's own list where it has one, else "
                          "every registered agent and the storage comparators; see "
                          "`clbench leaderboard list`)")
    run.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    run.add_argument("--dry-run", action="store_true",
                     help="run nothing: list the runs to do, each with what its file holds "
                          "(new, a run in progress elsewhere, or an unfinished run and "
                          "whether its checkpoint is kept)")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    run.add_argument("--backend", default="local", choices=BACKENDS,
                     help="local: a process pool here; ray: one Ray task per run")
    run.add_argument("--workers", type=int, default=1, help="local runs at a time (default 1)")
    run.add_argument("--threads", type=int, default=1,
                     help="torch threads per run, and the CPUs a Ray task asks for (default 1)")
    run.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--results", default=str(DEFAULT_RESULTS),
                     help=f"results folder (default {DEFAULT_RESULTS})")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=cmd_run)

    make = sub.add_parser("build", help="validate the results and write table, page and plots")
    make.add_argument("--results", default=str(DEFAULT_RESULTS),
                      help=f"results folder (default {DEFAULT_RESULTS})")
    make.add_argument("--out", default=str(DEFAULT_OUT),
                      help=f"output folder (default {DEFAULT_OUT})")
    make.add_argument("--readme", help="also write the offline suite's table between the "
                                       "<!-- leaderboard:offline --> markers of this file")
    make.add_argument("--allow-unsealed", action="store_true",
                      help="accept results of unsealed (in-process) runs; for debugging only")
    make.set_defaults(handler=cmd_build)
