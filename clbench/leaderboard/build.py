"""``clbench leaderboard build``: validate a results folder and write the leaderboard.

Reads ``<results>/<suite>/<entry>/<agent>/seed<k>.json`` through
:func:`clbench.results.load_result`, keeps the files that are valid, complete, sealed and
where they claim to be (their stream, agent variant and seed match their folders), and writes into
``<out>``: ``README.md`` (one table per suite entry), ``index.html`` (one self-contained
page) and ``plots/<suite>/<entry>/*.png``. Every other file is listed with its reason and
left out; the build goes on with the rest. Nothing written depends on the time, the machine
or absolute paths, so a rebuild is byte-identical.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from clbench.leaderboard import aggregate, page
from clbench.leaderboard.aggregate import Row, Run
from clbench.leaderboard.plots import write_plots
from clbench.leaderboard.suites import SUITES
from clbench.leaderboard.sweep import DEFAULT_RESULTS
from clbench.leaderboard.variants import agent_folder, spec_label
from clbench.results import ResultFormatError, load_result

DEFAULT_OUT = Path("leaderboard")
README_SUITE = "offline"  # the suite whose tables a README must have a place for
LAYOUT = "<suite>/<entry>/<agent>/seed<k>.json"
PROVENANCE_VERSIONS = ("python", "torch", "clbench")


@dataclass
class Build:
    """What a build found: the rows it shows and the files it left out (path: reason)."""

    rows: list[Row] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def section_of(relative: str) -> str:
    """``offline/SplitMNIST5k-v0__scenario-domain/...`` -> ``offline · clbench/SplitMNIST5k-v0
    scenario=domain`` (the folder name itself for entries of no known suite)."""
    suite, folder = relative.split("/")[:2]
    labels = {entry.folder: entry.label for entry in SUITES.get(suite, ())}
    return f"{suite} · {labels.get(folder, folder)}"


def _sealed(result) -> tuple[bool, str]:
    """(sealed, why not), from the result's ``sealed`` flag and its isolation's reason."""
    if result.sealed:
        return True, ""
    return False, f"not sealed ({result.isolation.get('reason') or 'no reason given'})"


def check_file(path: Path, relative: str, allow_unsealed: bool) -> tuple[Run | None, str]:
    """A run for an acceptable file, else (None, the reason it is left out)."""
    parts = relative.split("/")
    if len(parts) != 4 or not re.fullmatch(r"seed-?\d+\.json", parts[3]):
        return None, f"not in the layout {LAYOUT}"
    try:
        result = load_result(path)
    except (ResultFormatError, OSError, TypeError, ValueError) as error:
        return None, f"invalid: {str(error).replace(str(path) + ': ', '')}"
    if result.status != "complete":
        done = f"{len(result.accuracy)}/{len(result.env['task_names'])} tasks"
        return None, f"status {result.status} after {done}: {result.error or 'no error given'}"
    sealed, why = _sealed(result)
    if not sealed and not allow_unsealed:
        return None, why
    missing = [key for key in PROVENANCE_VERSIONS if not result.versions.get(key)]
    if missing:
        return None, f"no provenance: versions of {', '.join(missing)} missing"
    suite, folder, folder_of_agent, name = parts
    if name != f"seed{result.seed}.json":
        return None, f"holds seed {result.seed}, not what its name says"
    entry = {e.folder: e for e in SUITES.get(suite, ())}.get(folder)
    if entry is not None and (result.env["id"] != entry.env_id or any(
            result.env["kwargs"].get(k) != v for k, v in entry.kwargs.items())):
        return None, f"holds a run of {result.env['id']}, not of the entry {entry.label}"
    run = Run(relative, result, sealed=sealed)
    if folder_of_agent != agent_folder(run.agent, run.arguments):
        return None, (f"holds a run of agent {spec_label(run.agent, run.arguments)}, not of "
                      "the folder's agent variant")
    return run, ""


def collect(results: Path, allow_unsealed: bool = False) -> tuple[list[Run], list[str]]:
    """The acceptable runs under ``results`` and one 'path: reason' line per other file."""
    runs, left_out = [], []
    for path in sorted(Path(results).rglob("*.json")):
        relative = path.relative_to(results).as_posix()
        run, reason = check_file(path, relative, allow_unsealed)
        (runs.append(run) if run is not None else left_out.append(f"{relative}: {reason}"))
    return runs, left_out


def build(results: Path = DEFAULT_RESULTS, out: Path = DEFAULT_OUT, readme: Path | None = None,
          allow_unsealed: bool = False) -> Build:
    """Validate ``results`` and write the leaderboard into ``out`` (see the module doc);
    with ``readme``, also put the ``offline`` suite's tables, and those of every other suite
    the readme has markers for, between their markers."""
    results, out = Path(results), Path(out)
    runs, left_out = collect(results, allow_unsealed) if results.is_dir() else ([], [])
    rows, refused = aggregate.group(runs, lambda run: section_of(run.path))
    report = Build(rows, left_out + refused)
    out.mkdir(parents=True, exist_ok=True)
    plots_folder = out / "plots"
    shutil.rmtree(plots_folder, ignore_errors=True)
    plots: dict[str, dict[str, Path]] = {}
    for section in dict.fromkeys(row.section for row in rows):
        members = [row for row in rows if row.section == section]
        suite, folder = members[0].runs[0].path.split("/")[:2]
        plots[section] = write_plots(members, plots_folder / suite / folder)
        report.written += plots[section].values()
    relative_plots = {section: {name: path.relative_to(out).as_posix()
                                for name, path in paths.items()}
                      for section, paths in plots.items()}
    markdown = page.markdown_page(rows, report.left_out, relative_plots, results_label(results))
    (out / "README.md").write_text(markdown)
    (out / "index.html").write_text(page.html_page(rows, report.left_out, plots))
    report.written += [out / "README.md", out / "index.html"]
    if readme is not None:
        insert_suite_tables(Path(readme), rows)
        report.written.append(Path(readme))
    return report


def results_label(results: Path) -> str:
    """How the page names the results folder: relative, never an absolute path."""
    try:
        return results.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return results.name


def insert_suite_tables(readme: Path, rows: list[Row]) -> None:
    """Replace the text between ``<!-- leaderboard:SUITE -->`` and
    ``<!-- /leaderboard:SUITE -->`` in ``readme`` by that suite's generated tables, for
    :data:`README_SUITE` (whose markers must be there) and every other suite marked."""
    text = readme.read_text()
    for suite in dict.fromkeys([README_SUITE, *SUITES]):
        start, end = f"<!-- leaderboard:{suite} -->", f"<!-- /leaderboard:{suite} -->"
        if start not in text or end not in text:
            if suite != README_SUITE:
                continue
            raise ValueError(f"{readme} lacks the markers {start} and {end} around the place "
                             "for the generated table")
        tables = page.suite_markdown(
            [row for row in rows if row.section.startswith(f"{suite} · ")], suite,
            heading="####")
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{tables}\n{end}{rest.split(end, 1)[1]}"
    readme.write_text(text)
