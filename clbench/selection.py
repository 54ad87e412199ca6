"""``clbench select``: choose a value that every agent shares, over agents and streams.

    clbench select --key lr leaderboard/tuning/onevsrest/*.json leaderboard/tuning/split/*.json \\
                   --out leaderboard/tuning/shared_lr.json
    clbench select --show leaderboard/tuning/shared_lr.json

Why: one training recipe serves every agent that trains a network (:mod:`clbench.recipe`),
so a recipe value that sets how stable training is, the learning rate above all, cannot be
chosen on one agent. Chosen on ``independent`` alone (one fresh network per task, nothing
to disturb), SGD's lr 0.05 with momentum 0.9 won; under it naive fine-tuning of a shared
trunk fell to 0.69 on SplitMNIST5k's validation split and the quadratic penalties (EWC, SI)
diverged at strengths they need.

The inputs are ``clbench tune`` records (:mod:`clbench.tuning`), one per (agent, stream),
each on a stream's validation split with the shared ``--key`` in its grid beside the
agent's own keys (its strength, or nothing). Every agent must have a record on the same
streams, with the same grid on each, and every record the same seeds and the same values
of the key. The selection record (JSON, schema ``clbench.selection/1``) names each input
with its SHA-256, so a record edited after the selection no longer matches it.

Rule (:data:`RULE`):

1. An agent's setting scores the mean over streams of its mean validation ACC over the
   seeds. It is eligible only if it completed on every seed of every stream, and so did
   the setting one step further along each of the agent's own keys (the next value in grid
   order, where there is one: list values from the weakest, e.g. a penalty strength, up).
   A setting next to one that diverged sits at the edge of divergence, and the streams it
   is then run on are larger and longer than the validation streams: a penalty's
   importance weights grow with the steps and tasks seen. (It would not have caught the
   two failures that led to this command: SI c=100, whose stronger neighbour completed on
   its 5-task stream, and EWC lambda 10 at lr 0.05, whose neighbour 30 completed, with one
   seed at 0.605. Choosing the lr over every agent removed those.) Where an agent's
   weakest value is not eligible, extend its grid downward before trusting the rule.
2. For each value v of the key, each agent's best eligible setting with that value, by
   ``clbench tune``'s rule applied to the scores: settings within the resolution of the
   best tie, ties go to the smaller mean final state, then to grid order. The resolution is
   the least one validation query moves a score: min over streams of the stream's
   resolution, divided by the number of streams.
3. v scores the mean over agents of their best. A value under which some agent has no
   eligible setting is out (the recipe would leave that agent untrainable). The highest
   score wins; scores within the resolution divided by the number of agents tie, and the
   first value as listed wins a tie.

Each agent's regret at v (its best at any value minus its best at v, each picked by the
rule of step 2) is printed and
kept, with the worst over agents: what the shared value costs the agent it suits least.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clbench.tuning import EVALUATION_KWARG, choose, format_setting
from clbench.tuning import SCHEMA as TUNING_SCHEMA

SCHEMA = "clbench.selection/1"
RULE = ("an agent's setting scores the mean over streams of its mean validation ACC over "
        "the seeds, and is eligible only if it, and the setting one step further along each "
        "of the agent's own keys (next value in grid order), completed on every seed of "
        "every stream; for "
        "each value of the key, each agent's best eligible setting with that value (ties "
        "within the resolution go to the smaller mean final state, then to grid order); the "
        "value scores the mean of those bests over agents, a value leaving some agent "
        "without an eligible setting is out, and the highest score wins (within the "
        "resolution / agents: the first value listed)")


class SelectionError(ValueError):
    """Records that cannot be combined as given; the message names the file and the remedy."""


def stream_label(record: dict[str, Any]) -> str:
    """The stream a tuning record ran on: env id and its kwargs but the validation flag."""
    kwargs = {k: v for k, v in record["env"]["kwargs"].items() if k != EVALUATION_KWARG}
    extra = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(kwargs.items()))
    return f"{record['env']['id']} {extra}".strip()


def _load(path: str | Path) -> tuple[dict[str, Any], str]:
    try:
        data = Path(path).read_bytes()
        record = json.loads(data)
    except (OSError, json.JSONDecodeError) as error:
        raise SelectionError(f"cannot read the tuning record {path}: {error}") from None
    schema = record.get("schema") if isinstance(record, dict) else type(record).__name__
    if schema != TUNING_SCHEMA:
        raise SelectionError(f"{path} is not a tuning record (schema {schema!r}, expected "
                             f"{TUNING_SCHEMA}); give the files `clbench tune` wrote")
    if record.get("status") not in ("complete", "failed") or "resolution" not in record:
        raise SelectionError(f"{path} is unfinished (status {record.get('status')!r}); rerun "
                             f"its command to finish it: {record.get('command')}")
    missing = [field for field in ("agent", "env", "grid", "seeds", "settings",
                                   "fixed_agent_kwargs") if field not in record]
    if missing:
        raise SelectionError(f"{path} lacks the field(s) {', '.join(missing)}; rerun its "
                             f"command to write it again: {record.get('command')}")
    evaluation = record["env"].get("kwargs", {}).get(EVALUATION_KWARG)
    if evaluation != "validation":
        raise SelectionError(f"{path} was not run on validation data ({EVALUATION_KWARG}="
                             f"{evaluation!r}); nothing may be chosen on test accuracy: rerun "
                             "it with `clbench tune`, which runs on the validation split")
    return record, hashlib.sha256(data).hexdigest()


def _check_one_recipe(loaded: list[tuple[str, dict[str, Any], str]], key: str) -> None:
    """Refuse records whose complete runs trained with different recipes, apart from ``key``
    and each record's own grid keys (fields missing from a run are not compared)."""
    first: tuple[str, dict[str, Any]] | None = None
    for path, record, _ in loaded:
        for setting in record["settings"]:
            for run in setting["runs"]:
                if run.get("status") != "complete" or run.get("recipe") is None:
                    continue
                trained = {k: v for k, v in run["recipe"].items()
                           if k != key and k not in record["grid"]}
                if first is None:
                    first = (path, trained)
                for field in sorted(trained.keys() & first[1].keys()):
                    if trained[field] != first[1][field]:
                        raise SelectionError(
                            f"{path} and {first[0]} trained with different recipes ({field} "
                            f"{trained[field]!r} vs {first[1][field]!r}); every agent must "
                            f"share the recipe apart from {key!r}: tune them alike")


def _agent_settings(key: str, records: dict[str, tuple[str, dict[str, Any]]],
                    streams: list[str]) -> list[dict[str, Any]]:
    """One agent's settings, each scored over ``streams`` (step 1 of the rule)."""
    first = records[streams[0]][1]
    entries = []
    for index, setting in enumerate(first["settings"]):
        per_stream, sizes, completed = [], [], True
        for stream in streams:
            entry = records[stream][1]["settings"][index]
            complete = entry.get("summary") is not None and not entry.get("failed_seeds")
            completed &= complete
            per_stream.append(entry["summary"]["mean"] if complete else None)
            sizes.append(entry.get("mean_state_bytes"))
        entries.append({
            "setting": setting["setting"], "per_stream": per_stream, "completed": completed,
            "score": statistics.fmean(per_stream) if completed else None,
            "mean_state_bytes": statistics.fmean(sizes) if completed else None,
        })
    if not any(key in entry["setting"] for entry in entries):
        raise SelectionError(f"{records[streams[0]][0]} has no {key!r} in its grid")
    grid = first["grid"]
    by_setting = {json.dumps(entry["setting"], sort_keys=True): entry for entry in entries}
    for entry in entries:
        edge = []
        for own in (k for k in grid if k != key):
            values = grid[own]
            position = values.index(entry["setting"][own])
            if position + 1 < len(values):
                step = {**entry["setting"], own: values[position + 1]}
                if not by_setting[json.dumps(step, sort_keys=True)]["completed"]:
                    edge.append(own)
        entry["next_failed"] = edge
        entry["eligible"] = entry["completed"] and not edge
    return entries


def select(paths: Sequence[str | Path], key: str, command: str | None = None
           ) -> dict[str, Any]:
    """The selection record of ``key`` over the tuning records at ``paths`` (module
    docstring: the rule and what the records must share)."""
    if not paths:
        raise SelectionError("give the tuning records to select from")
    loaded = [(str(path), *_load(path)) for path in paths]
    inputs, by_agent = [], {}
    reference = loaded[0]
    _check_one_recipe(loaded, key)
    for path, record, digest in loaded:
        if key not in record["grid"]:
            raise SelectionError(f"{path} does not vary {key!r} (its grid: "
                                 f"{', '.join(record['grid'])}); tune it with --grid {key}=...")
        for what, mine, theirs in (
                ("seeds", record["seeds"], reference[1]["seeds"]),
                (f"values of {key!r}", record["grid"][key], reference[1]["grid"].get(key))):
            if mine != theirs:
                raise SelectionError(f"{path} and {reference[0]} differ in their {what} "
                                     f"({mine} vs {theirs}); tune them alike")
        stream = stream_label(record)
        agent_records = by_agent.setdefault(record["agent"], {})
        if stream in agent_records:
            raise SelectionError(f"{path} and {agent_records[stream][0]} are both agent "
                                 f"{record['agent']!r} on {stream}; give one of them")
        agent_records[stream] = (path, record)
        inputs.append({"path": path, "sha256": digest, "agent": record["agent"],
                       "stream": stream})
    streams = sorted({stream for records in by_agent.values() for stream in records})
    for agent, records in sorted(by_agent.items()):
        missing = [stream for stream in streams if stream not in records]
        if missing:
            raise SelectionError(f"agent {agent!r} has no record on {', '.join(missing)}; "
                                 "every agent needs one on every stream")
        first = records[streams[0]]
        for stream in streams[1:]:
            path, record = records[stream]
            for what in ("grid", "fixed_agent_kwargs"):
                if json.dumps(record[what]) != json.dumps(first[1][what]):
                    raise SelectionError(
                        f"agent {agent!r}'s records differ in their {what} ({path}: "
                        f"{json.dumps(record[what])}; {first[0]}: {json.dumps(first[1][what])}, "
                        "in this order); tune every stream with the same --grid and "
                        "--agent-arg options, keys in the same order")
    resolution = min(r["resolution"] for _, r, _ in loaded) / len(streams)
    values = reference[1]["grid"][key]
    agents: dict[str, Any] = {}
    for agent, records in sorted(by_agent.items()):
        settings = _agent_settings(key, records, streams)
        best = {}
        for value in values:
            candidates = [i for i, entry in enumerate(settings)
                          if entry["eligible"] and entry["setting"][key] == value]
            if not candidates:
                best[json.dumps(value)] = None
                continue
            pick = choose([{"summary": {"mean": settings[i]["score"]},
                            "mean_state_bytes": settings[i]["mean_state_bytes"]}
                           for i in candidates], resolution)
            best[json.dumps(value)] = candidates[pick]
        agents[agent] = {"records": [records[s][0] for s in streams], "settings": settings,
                         "best": best}
    top = {agent: max((entry["settings"][index]["score"]
                       for index in entry["best"].values() if index is not None), default=None)
           for agent, entry in agents.items()}
    scored = []
    for value in values:
        bests = {agent: entry["best"][json.dumps(value)] for agent, entry in agents.items()}
        if any(index is None for index in bests.values()):
            scored.append({"value": value, "score": None, "regret": None,
                           "without_eligible_setting": sorted(
                               agent for agent, index in bests.items() if index is None)})
            continue
        scores = {agent: agents[agent]["settings"][index]["score"]
                  for agent, index in bests.items()}
        regret = {agent: top[agent] - score for agent, score in scores.items()}
        scored.append({"value": value, "score": statistics.fmean(scores.values()),
                       "regret": regret, "worst_regret": max(regret.values())})
    eligible = [item for item in scored if item["score"] is not None]
    chosen = None
    if eligible:
        best_score = max(item["score"] for item in eligible)
        tie = resolution / len(agents)
        winner = next(item for item in eligible if item["score"] >= best_score - tie + 1e-12)
        chosen = {"value": winner["value"],
                  "settings": {agent: entry["settings"][entry["best"][json.dumps(
                      winner["value"])]]["setting"] for agent, entry in agents.items()}}
    return {"schema": SCHEMA, "command": command, "key": key, "values": values,
            "streams": streams, "seeds": reference[1]["seeds"], "rule": RULE,
            "resolution": resolution, "inputs": inputs, "agents": agents, "scores": scored,
            "chosen": chosen, "status": "complete" if chosen else "failed"}


def own_keys(setting: dict[str, Any], key: str) -> str:
    """An agent's setting without the shared key (``-`` when nothing else was tuned)."""
    rest = {k: v for k, v in setting.items() if k != key}
    return format_setting(rest) if rest else "-"


def table(selection: dict[str, Any]) -> str:
    """Markdown: one row per agent, one column per value of the key (the agent's best score
    there and its own setting), the regret under the chosen value; then the values' scores."""
    key, values = selection["key"], selection["values"]
    chosen = selection.get("chosen")
    heads = [f"{key}={json.dumps(v)}" + (" (chosen)" if chosen and v == chosen["value"] else "")
             for v in values]
    lines = [f"| agent | {' | '.join(heads)} | regret under the chosen |",
             "|---|" + "---:|" * len(values) + "---:|"]
    chosen_scores = next((item for item in selection["scores"]
                          if chosen and item["value"] == chosen["value"]), None)
    for agent, entry in selection["agents"].items():
        cells = []
        for value in values:
            index = entry["best"][json.dumps(value)]
            if index is None:
                cells.append("no eligible setting")
                continue
            best = entry["settings"][index]
            cells.append(f"{best['score']:.4f} ({own_keys(best['setting'], key)})")
        regret = chosen_scores["regret"][agent] if chosen_scores else None
        lines.append(f"| {agent} | {' | '.join(cells)} | "
                     f"{'-' if regret is None else f'{regret:.4f}'} |")
    means = ["out: no eligible setting for " + ", ".join(item["without_eligible_setting"])
             if item["score"] is None else f"**{item['score']:.4f}**"
             for item in selection["scores"]]
    worst = ["-" if item["score"] is None else f"{item['worst_regret']:.4f}"
             for item in selection["scores"]]
    lines.append(f"| mean over agents | {' | '.join(means)} | |")
    lines.append(f"| worst regret | {' | '.join(worst)} | |")
    return "\n".join(lines)


def report(selection: dict[str, Any]) -> str:
    """The table with its streams, rule, resolution and choice (what ``--show`` prints)."""
    chosen = selection.get("chosen")
    lines = [f"$ {selection['command']}", "",
             "streams (validation splits): " + "; ".join(selection["streams"]),
             f"seeds: {', '.join(map(str, selection['seeds']))}", "", table(selection), "",
             f"rule: {selection['rule']}; resolution {selection['resolution']:.5f}",
             ("chosen: " + f"{selection['key']}={json.dumps(chosen['value'])}" if chosen
              else "chosen: none (every value leaves some agent without an eligible setting)")]
    if chosen:
        lines += [f"  {agent}: {own_keys(setting, selection['key'])}"
                  for agent, setting in chosen["settings"].items()]
    edge = [f"  {agent}: {format_setting(entry['setting'])} (score {entry['score']:.4f})"
            for agent, item in selection["agents"].items() for entry in item["settings"]
            if entry["completed"] and entry["next_failed"]]
    if edge:
        lines += ["completed everywhere but not eligible, next to a setting that failed:",
                  *edge]
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    from clbench.results import write_json_atomic

    if args.show:
        try:
            selection = json.loads(Path(args.show).read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"clbench: cannot read {args.show}: {error}", file=sys.stderr)
            return 2
        if selection.get("schema") != SCHEMA:
            print(f"clbench: {args.show} is not a selection record (schema {SCHEMA})",
                  file=sys.stderr)
            return 2
        print(report(selection))
        return 0
    if not args.key or not args.records or not args.out:
        print("clbench: select needs --key, --out and the tuning records (or --show RECORD)",
              file=sys.stderr)
        return 2
    words = ["clbench", "select", "--key", args.key, *args.records, "--out", args.out]
    try:
        selection = select(args.records, args.key, " ".join(map(shlex.quote, words)))
    except SelectionError as error:
        print(f"clbench: {error}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, selection)
    print(report(selection))
    print(f"record: {args.out}")
    return 0 if selection["chosen"] else 1


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``clbench select`` to the CLI (the ``clbench.commands`` entry point)."""
    parser = commands.add_parser(
        "select", help="choose a value every agent shares from their tuning records",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="*", help="tuning records (one per agent and stream)")
    parser.add_argument("--key", help="the shared grid key to choose, e.g. lr")
    parser.add_argument("--out", help="where to write the selection record")
    parser.add_argument("--show", metavar="RECORD",
                        help="print a selection record's table and choice; runs nothing")
    parser.set_defaults(handler=run_command)
