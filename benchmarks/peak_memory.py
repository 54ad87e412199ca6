"""(f) Peak memory of a whole command's process tree, by default the offline suite's sweep.

Starts the command and, until it ends, samples every process descended from it (the sweep's
runs, their zygotes and sealed workers, bubblewrap included) every ``--interval`` seconds.
Each sample sums the processes' proportional set sizes (PSS, ``/proc/PID/smaps_rollup``:
a page shared by n processes counts 1/n in each, so forked workers sharing the zygote's
torch are not counted n times over) and, for comparison, their resident set sizes (RSS,
which counts shared pages once per process). It prints the peak of each sum, the largest
single process's peak RSS, and the command's wall seconds. Linux only (``/proc``).

    python benchmarks/peak_memory.py                      # offline suite, seed 0, 2 workers
    python benchmarks/peak_memory.py -- clbench run --env clbench/SplitMNIST5k-v0 --agent ewc
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clbench.sealed.zygote import process_parents

PROC = Path("/proc")


def children_map() -> dict[int, list[int]]:
    """Every live process's children."""
    children: dict[int, list[int]] = {}
    for pid, parent in process_parents().items():
        children.setdefault(parent, []).append(pid)
    return children


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, as the process table is now."""
    children, found, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB, (0, 0) if it has gone."""
    values = {"Pss:": 0, "Rss:": 0}
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            key, *rest = line.split()
            if key in values:
                values[key] = int(rest[0])
    except (OSError, ValueError, IndexError):
        pass
    return values["Pss:"], values["Rss:"]


def watch(command: list[str], interval: float) -> dict[str, float]:
    """Run ``command`` to its end; its peak summed PSS and RSS (bytes), largest process's
    RSS and wall seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak = {"pss": 0, "rss": 0, "largest_rss": 0}
    while process.poll() is None:
        sizes = [memory_kib(pid) for pid in descendants(process.pid)]
        peak["pss"] = max(peak["pss"], sum(pss for pss, _ in sizes) * 1024)
        peak["rss"] = max(peak["rss"], sum(rss for _, rss in sizes) * 1024)
        peak["largest_rss"] = max(peak["largest_rss"], max(rss for _, rss in sizes) * 1024)
        time.sleep(interval)
    if process.returncode:
        raise SystemExit(f"peak_memory: the command exited with {process.returncode}")
    return {**peak, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--seeds", default="0", help="seeds of the default sweep")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, default sweep")
    parser.add_argument("command", nargs="*", help="a command to watch instead (after --)")
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("peak_memory: needs Linux's /proc/PID/smaps_rollup")
    with tempfile.TemporaryDirectory() as results:
        command = args.command or [
            sys.executable, "-m", "clbench", "leaderboard", "run", "--suite", "offline",
            "--seeds", args.seeds, "--workers", str(args.workers), "--results", results,
            "--quiet"]
        print("watching:", " ".join(command), flush=True)
        peak = watch(command, args.interval)
    print(f"peak of the summed PSS: {peak['pss'] / 2**30:.2f} GiB (what the tree used)")
    print(f"peak of the summed RSS: {peak['rss'] / 2**30:.2f} GiB (shared pages counted per "
          "process)")
    print(f"largest single process: {peak['largest_rss'] / 2**30:.2f} GiB RSS")
    print(f"wall: {peak['seconds']:.0f} s on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
