"""``python -m clbench`` and the ``clbench`` command (:func:`main`).

A sealed ``clbench run`` first launches the zygote of its workers (which imports torch, about
two seconds of one core), then imports the command line and with it torch: both imports run
at once instead of one after the other. ``import clbench`` imports no torch, so nothing
heavy comes before the launch. Anything unusual (an abbreviated option, a ``data_root``,
``--no-seal``, another command) skips the early launch and the run starts its workers as
usual; the early zygote is used only where the run asks for exactly the same one.
"""

import argparse
import sys
from collections.abc import Sequence


def start_workers_early(argv: Sequence[str]) -> None:
    """Launch the zygote for ``clbench run --agent NAME`` (sealed, default data root)."""
    if not argv or argv[0] != "run":
        return
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--agent")
    parser.add_argument("--no-seal", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--env")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--env-arg", action="append", default=[])
    known, _ = parser.parse_known_args(argv[1:])
    if known.agent is None or known.no_seal or any(
            arg.startswith("data_root=") for arg in known.env_arg):
        return
    from clbench.agent import agent_reference, worker_target
    from clbench.checkpoint import RunInProgress, check_not_held, default_out
    from clbench.sealed.workers import start_early

    try:
        out = known.out or default_out(known.agent, known.env or "", int(known.seed))
        check_not_held(out)
        start_early(worker_target(agent_reference(known.agent)), {None}, [out])
    except (ValueError, OSError, RunInProgress):
        # an unknown agent, a zygote that cannot start, a file another run holds: the run
        # says so in its words
        return


def main() -> int:
    argv = sys.argv[1:]
    start_workers_early(argv)
    from clbench.cli import main as command_line
    from clbench.sealed.workers import discard_early

    try:
        return command_line(argv)
    finally:
        discard_early()


if __name__ == "__main__":
    sys.exit(main())
