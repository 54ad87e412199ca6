"""``clbench paper``: the paper's experiments as a command, plugged into the CLI through the
``clbench.commands`` entry-point group."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clbench.devices import DEVICE_CHOICES


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a clear error otherwise."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2")
    return seeds


def run(args: argparse.Namespace) -> int:
    from agents.tnen import paper
    from agents.tnen.paper import EXPERIMENTS
    from agents.tnen.paper.report import write_report

    if args.full and args.size not in (None, "full"):
        print(f"clbench: --full and --size {args.size} disagree; give one", file=sys.stderr)
        return 2
    size = "full" if args.full else (args.size or "reduced")
    names = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    try:
        if args.experiment == "report":
            print(f"report: {write_report(Path(args.out))}")
            return 0
        for name in names:
            for seed in args.seeds:
                path = paper.run_experiment(name, size=size, seed=seed, device=args.device,
                                            data_root=args.data_root, folder=args.out,
                                            report=False)
                print(f"{name}, seed {seed}: {path}")
        print(f"report: {write_report(Path(args.out))}")
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``clbench paper`` to the CLI (the ``clbench.commands`` entry point)."""
    from agents.tnen.paper import DEFAULT_FOLDER, EXPERIMENTS
    from agents.tnen.paper.common import SIZE_NAMES

    reproduce = commands.add_parser(
        "paper", help="reproduce the paper's experiments with TN+EN (writes leaderboard/paper/)")
    reproduce.add_argument("experiment", choices=[*EXPERIMENTS, "all", "report"],
                           help="one experiment, all of them, or `report` to regenerate the "
                                "sections, plots and README from the JSON files alone")
    reproduce.add_argument("--full", action="store_true",
                           help="the paper's sizes on the full datasets (same as --size full)")
    reproduce.add_argument("--size", choices=SIZE_NAMES,
                           help="reduced (default: offline on mnist5k, minutes on a CPU), "
                                "full, or tiny (seconds, for tests)")
    reproduce.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2],
                           help="seeds to run, one record each (default 0,1,2)")
    reproduce.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    reproduce.add_argument("--data-root", help="folder of the full datasets")
    reproduce.add_argument("--out", default=str(DEFAULT_FOLDER),
                           help=f"output folder (default {DEFAULT_FOLDER})")
    reproduce.set_defaults(handler=run)
