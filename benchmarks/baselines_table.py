"""Run agents x streams x seeds through ``clbench.evaluate`` and print a Markdown table.

One row per (agent, stream): mean ± sample standard deviation over the seeds of ACC, BWT
and forgetting, the state bytes after the last task, and the learn cost per task (wall
seconds and FLOPs, each the mean over the stream's tasks, then over seeds).

An agent is ``NAME`` or ``NAME,key=value,...`` (constructor arguments, values read as JSON),
e.g. ``independent,dtype=int8``; NAME is a registered agent or ``module:Class``. With
``--out-dir`` every run's result file is kept there, and a complete result already there for
the same agent, arguments, stream and seed is read instead of run again (only a complete
result run in sealed workers is reused by a sealed table; runs made with ``--no-seal`` are made
again unless the table runs with ``--no-seal`` too).

    python benchmarks/baselines_table.py --agents naive independent independent,dtype=int8 \\
        --envs clbench/SplitMNIST5k-v0 clbench/OneVsRestMNIST5k-v0 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import gymnasium

import clbench  # noqa: F401  (registers the environments)
from clbench.cli import parse_assignments
from clbench.devices import DEVICE_CHOICES
from clbench.harness import evaluate
from clbench.results import Result, ResultFormatError, load_result


def parse_agent(spec: str) -> tuple[str, dict]:
    """``"independent,dtype=int8"`` -> ``("independent", {"dtype": "int8"})``."""
    name, *assignments = spec.split(",")
    if not name:
        raise SystemExit(f"baselines_table: agent {spec!r} has no name; write NAME[,key=value...]")
    return name, parse_assignments(assignments, f"agent {name}:")


def result_path(out_dir: Path, spec: str, env_id: str, seed: int) -> Path:
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)
    return out_dir / f"{label}__{env_id.split('/')[-1]}__s{seed}.json"


def stream_kwargs(kwargs: dict) -> dict:
    """The make() arguments that define a stream (not where its tensors live)."""
    return {key: value for key, value in kwargs.items() if key not in ("device", "backend")}


def run_or_load(spec: str, env_id: str, seed: int, env_kwargs: dict, device: str,
                flops: bool, seal: bool, out_dir: Path | None) -> Result:
    """The result of one run: read from ``out_dir`` where a matching complete one is kept."""
    name, kwargs = parse_agent(spec)
    out = result_path(out_dir, spec, env_id, seed) if out_dir is not None else None
    if out is not None and out.exists():
        try:
            kept = load_result(out)
        except ResultFormatError:
            kept = None
        if (kept is not None and kept.status == "complete"
                and (not seal or kept.isolation.get("mode") == "workers")
                and kept.agent == {"name": name, "kwargs": kwargs}
                and stream_kwargs(kept.env["kwargs"]) == stream_kwargs(
                    {**gymnasium.spec(env_id).kwargs, **env_kwargs})):
            return kept
    return evaluate(name, env_id, seed=seed, device=device, agent_kwargs=kwargs,
                    env_kwargs=env_kwargs, out=out, flops=flops, seal=seal)


def mean_std(values: Sequence[float | None], scale: float = 1.0, digits: int = 3) -> str:
    present = [v * scale for v in values if v is not None]
    if not present:
        return "-"
    mean = statistics.fmean(present)
    if len(present) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(present):.{digits}f}"


def per_task_mean(values: Sequence[float | None]) -> float | None:
    return None if not values or None in values else statistics.fmean(values)


def table(rows: Sequence[tuple[str, str, list[Result]]]) -> str:
    """Markdown table, one row per (agent spec, env id, results over seeds)."""
    lines = ["| agent | stream | seeds | ACC | BWT | forgetting | state bytes after last task | "
             "learn s / task | learn GFLOP / task |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, env_id, results in rows:
        metric = {key: [r.metrics.get(key) for r in results]
                  for key in ("acc", "bwt", "forgetting")}
        storage = [r.storage["bytes"][-1] for r in results]
        storage_text = (f"{storage[0]:,}" if len(set(storage)) == 1
                        else f"{statistics.fmean(storage):,.0f} ± {statistics.stdev(storage):,.0f}")
        seconds = [per_task_mean(r.costs["learn_seconds"]) for r in results]
        flops = [per_task_mean(r.costs["learn_flops"]) for r in results]
        lines.append(
            f"| {spec} | {env_id} | {len(results)} | {mean_std(metric['acc'])} | "
            f"{mean_std(metric['bwt'])} | {mean_std(metric['forgetting'])} | {storage_text} | "
            f"{mean_std(seconds, digits=2)} | {mean_std(flops, scale=1e-9, digits=2)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", required=True, metavar="NAME[,key=value...]")
    parser.add_argument("--envs", nargs="+", required=True, metavar="ENV_ID")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="make() argument for every stream, e.g. n_tasks=3 (repeatable)")
    parser.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    parser.add_argument("--no-flops", action="store_true", help="skip counting learn FLOPs")
    parser.add_argument("--no-seal", action="store_true",
                        help="run the agents in process (debugging; results say unsealed)")
    parser.add_argument("--out-dir", type=Path, help="keep (and reuse) result files here")
    args = parser.parse_args(argv)
    env_kwargs = parse_assignments(args.env_arg, "--env-arg")
    for spec in args.agents:
        parse_agent(spec)
    rows = []
    for env_id in args.envs:
        for spec in args.agents:
            results = [run_or_load(spec, env_id, seed, env_kwargs, args.device, not args.no_flops,
                                   not args.no_seal, args.out_dir) for seed in args.seeds]
            failed = [r for r in results if r.status != "complete"]
            if failed:
                print(f"baselines_table: {spec} on {env_id}: {failed[0].error}", file=sys.stderr)
                return 1
            rows.append((spec, env_id, results))
            print(f"done: {spec} on {env_id}", file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
