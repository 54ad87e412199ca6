"""(e) TN+EN on a long tuple stream, end to end through `clbench run`, and where its time goes.

Runs ``clbench run --agent tnen`` on ``clbench/TupleMNIST5k-v0`` with ``--n-tasks`` tasks
(333 in the paper's batch experiment), sealed, full accuracy matrix, once with
``--no-flops`` (timed) and once with FLOPs counted (unless ``--no-flop-run``), each as a whole
process, and prints from the two result files:

- end to end: the process's wall seconds, and the harness's learn and evaluation seconds;
- at k = 10, 50, 100, ... (``--at``): learn seconds and learn FLOPs of skill k, and their
  mean over the ten skills up to k (how many EN iterations a skill needs varies with its
  task, so one skill's figure says more about that task than about the growth with k), and
  the seconds of the evaluation step after skill k (every stored task's test queries) and,
  where FLOPs were counted, the GFLOP/s it ran at: the step is the reference net's
  convolutions over every query, so that rate, set beside the host's matrix-multiply rate
  (``training_speed.py``), says how much faster it could be on the host (printed);
- accuracy: ACC of the final state, its worst skill, and the mean held-out accuracy of the
  TNs it encoded next to their stored reconstructions' (both measured by the agent when it
  stored each skill, on the held-out part of that task's training data).

    python benchmarks/tnen_stream.py --n-tasks 333
    python benchmarks/tnen_stream.py --from-results run.json [flops.json]   # read, not run

With ``--from-results`` it reads existing result files instead (e.g. a leaderboard sweep's:
a sweep counts FLOPs in a replay, so one file gives both), and says that their seconds were
measured however that run was.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import host, markdown

ENV = "clbench/TupleMNIST5k-v0"


def run(n_tasks: int, seed: int, out: Path, flops: bool) -> float:
    """Whole-process wall seconds of one ``clbench run`` writing ``out``."""
    command = [sys.executable, "-m", "clbench", "run", "--env", ENV, "--env-arg",
               f"n_tasks={n_tasks}", "--agent", "tnen", "--seed", str(seed), "--device", "cpu",
               "--quiet", "--out", str(out), *([] if flops else ["--no-flops"])]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def window(values: list, k: int) -> float | None:
    """The mean of ``values`` over the ten skills up to skill k (1-based)."""
    part = [v for v in values[max(0, k - 10):k] if v is not None]
    return statistics.fmean(part) if part else None


def figures(timed: dict, counted: dict | None, at: list[int]) -> list[list[object]]:
    costs = timed["costs"]
    flops = (counted or timed)["costs"]["learn_flops"]
    predict_flops = (counted or timed)["costs"]["predict_flops"]
    iterations = [m["en_iterations"] for m in timed["agent_metrics"]]
    rows = []
    for k in [k for k in at if k <= len(costs["learn_seconds"])]:
        single_flops = flops[k - 1]
        rows.append([k, f"{costs['learn_seconds'][k - 1]:.2f}",
                     f"{window(costs['learn_seconds'], k):.2f}", f"{window(iterations, k):.0f}",
                     "-" if single_flops is None else f"{single_flops / 1e9:.1f}",
                     "-" if window(flops, k) is None else f"{window(flops, k) / 1e9:.1f}",
                     f"{costs['predict_seconds'][k - 1]:.2f}",
                     "-" if predict_flops[k - 1] is None else
                     f"{predict_flops[k - 1] / 1e9 / costs['predict_seconds'][k - 1]:.0f}"])
    return rows


def accuracy_summary(result: dict) -> str:
    final = result["accuracy"][-1]
    worst = min(range(len(final)), key=final.__getitem__)
    skills = result["agent_metrics"][-1]["skills"]
    held_out = {key: statistics.fmean(s[key] for s in skills if s.get(key) is not None)
                for key in ("tn_held_out_accuracy", "stored_held_out_accuracy")}
    return (f"ACC {result['metrics']['acc']:.4f}; worst skill {final[worst]:.3f} (task "
            f"{worst}); held-out accuracy at storing time, mean over skills: TNs "
            f"{held_out['tn_held_out_accuracy']:.4f}, stored reconstructions "
            f"{held_out['stored_held_out_accuracy']:.4f}; final state "
            f"{result['storage']['bytes'][-1]:,} B")


def report(timed: dict, counted: dict | None, at: list[int], wall: dict[str, float]) -> None:
    costs = timed["costs"]
    print(f"{timed['env']['id']} n_tasks={len(costs['learn_seconds'])}, seed {timed['seed']}, "
          f"sealed {timed['sealed']}, clbench commit {timed['git_commit']}")
    if wall:
        print(f"- host: {host()}")
    for name, seconds in wall.items():
        print(f"- {name}: {seconds:.0f} s end to end ({seconds / 60:.1f} min)")
    print(f"- harness wall {timed['wall_seconds']:.0f} s: learn "
          f"{sum(costs['learn_seconds']):.0f} s, evaluation steps "
          f"{sum(costs['predict_seconds']):.0f} s (timed calls, without worker starts)")
    print(f"- {accuracy_summary(timed)}")
    print()
    metrics = timed["agent_metrics"]
    met = sum(m["stopping_rule_met"] for m in metrics)
    stalled = sum(m.get("en_stalled", False) for m in metrics)
    print(f"- EN training of the {len(metrics)} skills: stopping rule met on {met}, stopped "
          f"by stalled progress on {stalled}, at the iteration cap on "
          f"{len(metrics) - met - stalled}")
    print()
    print(markdown(["k", "learn s, skill k", "learn s, mean k-9..k",
                    "EN iterations, mean k-9..k", "learn GFLOP, skill k",
                    "learn GFLOP, mean k-9..k", "evaluation step s after skill k",
                    "its GFLOP/s"],
                   figures(timed, counted, at)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tasks", type=int, default=333)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--at", default="10,50,100,333",
                        help="comma-separated skill counts k for the table")
    parser.add_argument("--no-flop-run", action="store_true",
                        help="skip the second run that counts learn FLOPs")
    parser.add_argument("--keep", type=Path, metavar="FOLDER",
                        help="write the result files here (timed.json, counted.json) instead "
                             "of a temporary folder, to read again with --from-results")
    parser.add_argument("--from-results", nargs="+", type=Path, metavar="RESULT",
                        help="read these result files (timed, then optionally FLOP-counted) "
                             "instead of running")
    args = parser.parse_args()
    at = [int(k) for k in args.at.split(",")]
    if args.from_results:
        loaded = [json.loads(path.read_text()) for path in args.from_results]
        print("read from existing result files; their seconds are as measured in those runs")
        report(loaded[0], loaded[1] if len(loaded) > 1 else None, at, {})
        return
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        wall = {"clbench run --no-flops": run(args.n_tasks, args.seed, folder / "timed.json",
                                              flops=False)}
        if not args.no_flop_run:
            wall["clbench run (FLOPs counted)"] = run(args.n_tasks, args.seed,
                                                      folder / "counted.json", flops=True)
        timed = json.loads((folder / "timed.json").read_text())
        counted = (None if args.no_flop_run
                   else json.loads((folder / "counted.json").read_text()))
    report(timed, counted, at, wall)


if __name__ == "__main__":
    main()
