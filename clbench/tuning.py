"""``clbench tune``: choose hyperparameters on the validation split and keep the record.

    clbench tune --agent A --env E --grid key=v1,v2,... [--grid ...] --seeds 0,1,2
                 [--env-arg k=v ...] [--agent-arg k=v ...] [--out leaderboard/tuning/A.json]
    clbench tune --show leaderboard/tuning/A.json

runs every setting of the grid (the product of the ``--grid`` lists, on top of the fixed
``--agent-arg`` values) for every seed through :func:`clbench.evaluate`, on the env made
with ``evaluation="validation"``: each task's queries are a seeded, class-stratified
held-out part of its training data, so the test split is never read. It prints a table
(mean ± std of validation ACC over seeds, the worst seed, the chosen setting marked) and
writes a tuning record (JSON, schema ``clbench.tuning/1``): the command, grid, seeds, env
and kwargs, the figures of every (setting, seed), the choice and the rule that made it,
the clbench version and git commit. The record is rewritten after every run, and a rerun of
the same command on the same commit reuses the runs it holds, so an interruption loses no
finished run (on another commit, or outside a git checkout, it refuses to mix runs).

Selection rule (:data:`RULE`): the highest mean validation ACC over the seeds; settings
whose mean lies within one validation example's resolution of the best are tied (the
resolution is ``1 / (T * min_j n_j)``, the least a single validation query of the smallest
task moves ACC, with T tasks of n_j validation queries); among tied settings the one with
the smallest mean final state (bytes) wins, then the one that comes first in grid order. So
list each key's values from the cheapest or smallest first (``epochs=5,10,20``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import itertools
import json
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import torch

import clbench
from clbench.devices import DEVICE_CHOICES

SCHEMA = "clbench.tuning/1"
EVALUATION_KWARG, VALIDATION = "evaluation", "validation"
DEFAULT_FOLDER = Path("leaderboard") / "tuning"
RULE = ("highest mean validation ACC over the seeds; means within one validation example's "
        "resolution (1 / (tasks x fewest validation queries of a task)) of the best are tied, "
        "and ties go to the smallest mean final state bytes, then to the first setting in "
        "grid order (each key's values as listed)")


class TuningError(ValueError):
    """A tuning request that cannot be run as given; the message names the remedy."""


# ----------------------------------------------------------------------------- parsing
def parse_value(text: str) -> Any:
    """A grid or argument value: JSON where it parses (numbers, true, null), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(entries: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.01,0.05", "epochs=5"]`` -> ``{"lr": [0.01, 0.05], "epochs": [5]}``."""
    grid: dict[str, list[Any]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise TuningError(f"--grid {entry!r} is not of the form key=v1,v2,...")
        if key in grid:
            raise TuningError(f"--grid names {key!r} twice; give all its values in one --grid")
        grid[key] = [parse_value(text) for text in values.split(",")]
        if len(set(map(json.dumps, grid[key]))) != len(grid[key]):
            raise TuningError(f"--grid {entry!r} repeats a value")
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise TuningError(f"--seeds {text!r}: give whole numbers separated by commas, "
                          "e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise TuningError(f"--seeds {text!r} repeats a seed")
    return seeds


def settings_of(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every setting of the grid, in grid order (the first key varies slowest)."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


# ----------------------------------------------------------------------------- the env
def require_validation_split(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Refuse, before any run, an env that cannot hold out a validation split, and any
    request to evaluate on something else."""
    if env_kwargs.get(EVALUATION_KWARG, VALIDATION) != VALIDATION:
        raise TuningError(f"--env-arg {EVALUATION_KWARG}={env_kwargs[EVALUATION_KWARG]!r}: "
                          f"tuning runs on {EVALUATION_KWARG}={VALIDATION!r} only (it never "
                          "reads the test split); leave that argument out")
    try:
        spec = gymnasium.spec(env_id)
    except gymnasium.error.Error as error:
        raise TuningError(f"unknown environment {env_id!r} ({error}); see `clbench list`"
                          ) from None
    entry = spec.entry_point
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    parameters = inspect.signature(entry).parameters
    if EVALUATION_KWARG not in parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise TuningError(
            f"environment {env_id!r} has no {EVALUATION_KWARG}= argument, so it cannot hold "
            f"out a validation split ({EVALUATION_KWARG}={VALIDATION!r}); `clbench tune` "
            "never scores on the test split. Use a clbench version whose env supports the "
            "validation split, or an env that does")


def validation_sizes(env_id: str, env_kwargs: dict[str, Any], seed: int) -> list[int]:
    """Validation queries per task of the episode ``seed`` (stepping with dummy labels)."""
    env = gymnasium.make(env_id, **{**env_kwargs, "backend": "torch"}, disable_env_checker=True)
    try:
        obs, _ = env.reset(seed=seed)
        while True:
            n = len(obs["query_task_ids"])
            last = obs["query_task_ids"]
            obs, _, terminated, _, _ = env.step(torch.zeros(n, dtype=torch.int64))
            if terminated:
                return torch.bincount(last.cpu()).tolist()
    finally:
        env.close()


def require_valid_settings(agent: str, fixed: dict[str, Any],
                           settings: Sequence[dict[str, Any]]) -> None:
    """Build the agent once per setting (cheap: no training) so that a misspelt key or a bad
    value stops the command before any run, naming the setting."""
    from clbench.agent import load_agent_class

    cls = load_agent_class(agent)
    for setting in settings:
        try:
            cls(device="cpu", **fixed, **setting)
        except (TypeError, ValueError) as error:
            raise TuningError(f"agent {agent!r} refuses the setting {format_setting(setting)}: "
                              f"{error}") from None


# ----------------------------------------------------------------------------- the choice
def summarize(accuracies: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample std (None for one seed) and worst of one setting's ACCs."""
    return {"mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "worst": min(accuracies)}


def choose(entries: Sequence[dict[str, Any]], resolution: float) -> int:
    """Index of the chosen setting under :data:`RULE` (``entries`` in grid order, each with
    ``summary["mean"]`` and ``mean_state_bytes``)."""
    best = max(entry["summary"]["mean"] for entry in entries)
    tied = [i for i, entry in enumerate(entries)
            if entry["summary"]["mean"] >= best - resolution + 1e-12]
    return min(tied, key=lambda i: (entries[i]["mean_state_bytes"], i))


def choice_given(record: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any] | None:
    """The setting :data:`RULE` chooses among a record's settings that agree with ``fixed``
    (e.g. the recipe's lr, chosen over several agents by ``clbench select``); ``None`` where
    none of them completed on every seed."""
    entries = [entry for entry in record["settings"]
               if all(entry["setting"].get(key) == value for key, value in fixed.items())
               and entry.get("summary") is not None and not entry.get("failed_seeds")]
    if not entries:
        return None
    return entries[choose(entries, record["resolution"])]["setting"]


# ----------------------------------------------------------------------------- running
def run_key(setting: dict[str, Any], seed: int) -> str:
    return json.dumps({"setting": setting, "seed": seed}, sort_keys=True)


def identity(record: dict[str, Any]) -> dict[str, Any]:
    """What must match for a record's runs to be reused: the request, and the code (its git
    commit: a default that changed since, such as the training recipe, changes what the same
    request runs)."""
    return {key: record[key] for key in ("agent", "env", "fixed_agent_kwargs", "grid", "seeds",
                                         "git_commit")}


def one_run(agent: str, env_id: str, env_kwargs: dict[str, Any], agent_kwargs: dict[str, Any],
            seed: int, device: str) -> dict[str, Any]:
    """Run one (setting, seed) on validation; its figures for the record."""
    from clbench.harness import AgentError

    try:
        result = clbench.evaluate(agent, env_id, seed=seed, device=device,
                                  agent_kwargs=agent_kwargs, env_kwargs=env_kwargs, flops=False)
    except AgentError as error:
        return {"seed": seed, "status": "failed", "error": str(error), "acc": None}
    if result.env["kwargs"].get(EVALUATION_KWARG) != VALIDATION:
        raise TuningError(f"the run of {env_id!r} did not record {EVALUATION_KWARG}="
                          f"{VALIDATION!r}; refusing to use it")
    figures = result.agent_metrics[-1] if result.agent_metrics else {}
    return {
        "seed": seed, "status": result.status, "error": result.error,
        "acc": result.metrics.get("acc"), "bwt": result.metrics.get("bwt"),
        "forgetting": result.metrics.get("forgetting"),
        "final_state_bytes": result.storage["bytes"][-1] if result.storage["bytes"] else None,
        "learn_seconds": sum(result.costs["learn_seconds"]),
        "recipe": figures.get("recipe"),
    }


def tune(agent: str, env_id: str, grid: dict[str, list[Any]], seeds: Sequence[int],
         env_kwargs: dict[str, Any] | None = None, agent_kwargs: dict[str, Any] | None = None,
         out: str | Path | None = None, device: str = "cpu", command: str | None = None,
         log=print) -> dict[str, Any]:
    """Run the grid on validation and return (and write to ``out``) the tuning record."""
    from clbench.harness import git_commit, versions
    from clbench.results import write_json_atomic

    if not grid:
        raise TuningError("give at least one --grid key=v1,v2,...")
    if not seeds:
        raise TuningError("give at least one seed")
    fixed = dict(agent_kwargs or {})
    clash = sorted(set(fixed) & set(grid))
    if clash:
        raise TuningError(f"{', '.join(clash)} is both a fixed --agent-arg and a --grid key; "
                          "give it in one place")
    env_kwargs = dict(env_kwargs or {})
    require_validation_split(env_id, env_kwargs)
    settings = settings_of(grid)
    require_valid_settings(agent, fixed, settings)
    env_kwargs[EVALUATION_KWARG] = VALIDATION
    record: dict[str, Any] = {
        "schema": SCHEMA, "command": command, "agent": agent,
        "env": {"id": env_id, "kwargs": env_kwargs}, "fixed_agent_kwargs": fixed,
        "grid": grid, "seeds": list(seeds), "rule": RULE,
        "versions": versions(), "git_commit": git_commit(),
        "started_at": _now(), "finished_at": None, "status": "running",
    }
    done: dict[str, dict[str, Any]] = {}
    if out is not None and Path(out).exists():
        previous = json.loads(Path(out).read_text())
        if previous.get("schema") != SCHEMA or identity(previous) != identity(record):
            raise TuningError(f"{out} holds a tuning record of another request or of other code "
                              "(agent, env, grid, seeds, fixed arguments or git commit differ); "
                              "give another --out or remove it")
        if record["git_commit"] is None:
            raise TuningError(f"{out} exists and this clbench is not a git checkout, so "
                              "whether its runs were made by this code cannot be told; give "
                              "another --out or remove it")
        done = {run_key(entry["setting"], run["seed"]): run
                for entry in previous["settings"] for run in entry["runs"]
                if run["status"] == "complete"}
    entries = [{"setting": setting, "runs": []} for setting in settings]
    record["settings"] = entries
    total = len(settings) * len(seeds)
    for number, (entry, seed) in enumerate(
            ((entry, seed) for entry in entries for seed in seeds), start=1):
        key = run_key(entry["setting"], seed)
        run = done.get(key) or one_run(agent, env_id, env_kwargs,
                                       {**fixed, **entry["setting"]}, seed, device)
        entry["runs"].append(run)
        acc = "failed" if run["acc"] is None else f"{run['acc']:.4f}"
        log(f"[{number}/{total}] {format_setting(entry['setting'])} seed {seed}: "
            f"validation ACC {acc}{' (kept from the record)' if key in done else ''}")
        if out is not None:
            write_json_atomic(out, record)
    sizes = [validation_sizes(env_id, env_kwargs, seed) for seed in seeds]
    record["resolution"] = 1.0 / min(len(per_task) * min(per_task) for per_task in sizes)
    complete = []
    for index, entry in enumerate(entries):
        accs = [run["acc"] for run in entry["runs"] if run["status"] == "complete"]
        entry["failed_seeds"] = [run["seed"] for run in entry["runs"]
                                 if run["status"] != "complete"]
        entry["summary"] = summarize(accs) if accs else None
        state_bytes = [run["final_state_bytes"] for run in entry["runs"]
                       if run["status"] == "complete"]
        entry["mean_state_bytes"] = statistics.fmean(state_bytes) if state_bytes else None
        if accs and not entry["failed_seeds"]:
            complete.append(index)
    if not complete:
        record["status"], record["chosen"] = "failed", None
    else:
        chosen = complete[choose([entries[i] for i in complete], record["resolution"])]
        record["chosen"] = {"index": chosen, "setting": entries[chosen]["setting"]}
        record["status"] = "complete"
    record["finished_at"] = _now()
    if out is not None:
        write_json_atomic(out, record)
    return record


def format_setting(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in setting.items())


def table(record: dict[str, Any]) -> str:
    """Markdown table of a tuning record: one row per setting, the chosen one marked."""
    seeds = record["seeds"]
    keys = list(record["grid"])
    lines = [f"| {' | '.join(keys)} | validation ACC (mean ± std) | worst seed | "
             f"{' | '.join(f'seed {s}' for s in seeds)} | state bytes | chosen |",
             "|" + "---|" * len(keys) + "---:|---:|" + "---:|" * len(seeds) + "---:|:---:|"]
    chosen = (record.get("chosen") or {}).get("index")
    for index, entry in enumerate(record["settings"]):
        summary, failed = entry.get("summary"), entry.get("failed_seeds")
        if summary is None or failed:
            figure = "failed on seed " + ", ".join(map(str, failed)) if failed else "failed"
            worst = "-"
        else:
            spread = "" if summary["std"] is None else f" ± {summary['std']:.4f}"
            figure, worst = f"{summary['mean']:.4f}{spread}", f"{summary['worst']:.4f}"
        per_seed = ["failed" if run["acc"] is None else f"{run['acc']:.4f}"
                    for run in entry["runs"]]
        state = entry.get("mean_state_bytes")
        lines.append(f"| {' | '.join(json.dumps(entry['setting'][k]) for k in keys)} | "
                     f"{figure} | {worst} | {' | '.join(per_seed)} | "
                     f"{'-' if state is None else f'{state:,.0f}'} | "
                     f"{'<-' if index == chosen else ''} |")
    return "\n".join(lines)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the command
def show(path: str) -> int:
    """Print a committed tuning record's command, table, rule and choice."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"clbench: cannot read the tuning record {path}: {error}", file=sys.stderr)
        return 2
    if record.get("schema") != SCHEMA:
        print(f"clbench: {path} is not a tuning record (schema {SCHEMA})", file=sys.stderr)
        return 2
    print(f"$ {record['command']}\n")
    print(table(record))
    print(f"\nrule: {record['rule']}; resolution {record.get('resolution', float('nan')):.5f}")
    chosen = record.get("chosen")
    print("chosen: " + (format_setting(chosen["setting"]) if chosen
                        else "none (every setting failed)"))
    return 0


def run_command(args: argparse.Namespace) -> int:
    from clbench.cli import parse_assignments

    if args.show:
        return show(args.show)
    missing = [option for option, value in (("--agent", args.agent), ("--env", args.env),
                                            ("--grid", args.grid)) if not value]
    if missing:
        print(f"clbench: tune needs {', '.join(missing)} (or --show RECORD)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else DEFAULT_FOLDER / f"{args.agent}.json"
    command = command_line(args, out)
    try:
        record = tune(args.agent, args.env, parse_grid(args.grid), parse_seeds(args.seeds),
                      env_kwargs=parse_assignments(args.env_arg, "--env-arg"),
                      agent_kwargs=parse_assignments(args.agent_arg, "--agent-arg"),
                      out=out, device=args.device, command=command,
                      log=(lambda message: None) if args.quiet else print)
    except (TuningError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    print()
    print(table(record))
    print(f"\nrule: {RULE}; resolution {record['resolution']:.5f}")
    if record["chosen"] is None:
        print(f"clbench: every setting failed; see {out}", file=sys.stderr)
        return 1
    print(f"chosen: {format_setting(record['chosen']['setting'])}")
    print(f"record: {out}")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``clbench tune`` to the CLI (the ``clbench.commands`` entry point)."""
    tune_parser = commands.add_parser(
        "tune", help="choose hyperparameters on the validation split; writes a tuning record",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune_parser.add_argument("--agent", help="registered agent name")
    tune_parser.add_argument("--env", help="environment id")
    tune_parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                             help="an agent argument and the values to try (repeatable; the "
                                  "grid is the product; list values cheapest first)")
    tune_parser.add_argument("--seeds", default="0,1,2", help="seeds, e.g. 0,1,2 (default)")
    tune_parser.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                             help="environment make() argument (repeatable)")
    tune_parser.add_argument("--agent-arg", action="append", default=[], metavar="KEY=VALUE",
                             help="agent argument fixed for every setting (repeatable)")
    tune_parser.add_argument("--out", help=f"tuning record (default {DEFAULT_FOLDER}/AGENT.json)")
    tune_parser.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    tune_parser.add_argument("--quiet", action="store_true", help="no line per run")
    tune_parser.add_argument("--show", metavar="RECORD",
                             help="print a tuning record's table and choice; runs nothing")
    tune_parser.set_defaults(handler=run_command)


def command_line(args: argparse.Namespace, out: Path) -> str:
    """The command that reproduces this tuning record, in canonical form."""
    words = ["clbench", "tune", "--agent", args.agent, "--env", args.env]
    for option, values in (("--grid", args.grid), ("--env-arg", args.env_arg),
                           ("--agent-arg", args.agent_arg)):
        for value in values:
            words += [option, value]
    words += ["--seeds", args.seeds, "--device", args.device, "--out", str(out)]
    return " ".join(shlex.quote(word) for word in words)
