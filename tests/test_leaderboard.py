"""The leaderboard as its users run it: suites, resumable sweeps (local pool and Ray),
canonical agent names, the build (validation, aggregation, byte-identical output) and
``clbench table``. Streams are tiny (2 tasks, 40 training images per task)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from agents_for_tests import ConstantZero
from filelock import FileLock

from clbench.agent import (
    agent_arguments,
    canonical_agent_name,
    load_agent_class,
    non_default_arguments,
    registered_agents,
)
from clbench.checkpoint import lock_for
from clbench.cli import assignment_text, main, parse_assignments
from clbench.env.registration import check_env_kwargs
from clbench.leaderboard import aggregate, sweep
from clbench.leaderboard.aggregate import row_cells
from clbench.leaderboard.build import build
from clbench.leaderboard.page import not_run
from clbench.leaderboard.suites import STORAGE_COMPARATORS, SUITES, Entry, default_agents
from clbench.leaderboard.variants import (
    parse_spec,
    resolve_spec,
    resolve_specs,
    spec_label,
    split_specs,
)
from clbench.results import load_result
from clbench.sealed.sandbox import bwrap_status

ROOT = Path(__file__).resolve().parents[1]
TINY = Entry("clbench/OneVsRestMNIST5k-v0",
             {"n_tasks": 2, "max_train_per_task": 40, "max_test_per_task": 20})
SUITE = "tiny"
# runs are sealed where bubblewrap works; elsewhere the build is asked to accept unsealed
# results wherever a test is about something else
SEALED = bwrap_status()[0]
# what a rerun must reproduce exactly (timings and timestamps differ from run to run)
SAME = ("env", "agent", "seed", "status", "accuracy", "metrics", "storage")


class DomainAgent(ConstantZero):
    """Declares both scenarios (the sweep must plan it for domain-incremental entries)."""

    scenarios = ("task", "domain")


def same_content(a: Path, b: Path, keys: tuple[str, ...] = SAME) -> bool:
    one, two = json.loads(a.read_text()), json.loads(b.read_text())
    return all(one[key] == two[key] for key in keys) and \
        one["costs"]["learn_flops"] == two["costs"]["learn_flops"]


def run_plan(root: Path, agents, seeds, **options) -> list[str]:
    planned = sweep.plan(SUITE, [TINY], agents, seeds, root)
    return sweep.sweep(planned.jobs, device="cpu", progress=False, **options)


@pytest.fixture(scope="session")
def swept(tmp_path_factory) -> Path:
    """One uninterrupted local sweep: random x seeds 0-2, naive x seeds 0-1. Read it, do not
    change it: under pytest-xdist every test process of the session shares it (the first to
    need it runs it, 15-25 s of sealed runs, while the others wait)."""
    session = tmp_path_factory.getbasetemp()
    root = (session.parent if "PYTEST_XDIST_WORKER" in os.environ else session) / "swept"
    complete = Path(f"{root}.complete")
    with FileLock(f"{root}.lock"):
        if not complete.exists():
            shutil.rmtree(root, ignore_errors=True)
            jobs = [job for agent, seeds in (("random", [0, 1, 2]), ("naive", [0, 1]))
                    for job in sweep.plan(SUITE, [TINY], [agent], seeds, root).jobs]
            assert sweep.sweep(jobs, device="cpu", progress=False, workers=2) == []
            complete.touch()
    return root


def copy_results(swept: Path, tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(swept, results)
    return results


def folder(root: Path, agent: str) -> Path:
    return root / SUITE / TINY.folder / agent


# ----------------------------------------------------------------------------- names
def test_one_canonical_name_whichever_way_an_agent_is_given():
    from baselines.naive import Naive

    assert canonical_agent_name("naive") == canonical_agent_name("baselines.naive:Naive") \
        == canonical_agent_name(Naive) == "naive"
    by_file = canonical_agent_name(f"{ROOT}/tests/agents_for_tests.py:ConstantZero")
    assert by_file == canonical_agent_name("agents_for_tests:ConstantZero") \
        == canonical_agent_name(ConstantZero) \
        == canonical_agent_name(load_agent_class("tests/agents_for_tests.py:ConstantZero")) \
        == "agents_for_tests:ConstantZero"


def test_non_default_arguments_compare_with_the_constructor():
    joint = agent_arguments(load_agent_class("joint"))  # **kwargs passed on to Naive
    assert joint["epochs"] == agent_arguments(load_agent_class("naive"))["epochs"]
    assert non_default_arguments({"epochs": joint["epochs"], "lr": 0.5}, joint) == {"lr": 0.5}
    assert non_default_arguments({"lr": 0.5}, None) == {"lr": 0.5}  # agent not installed


def test_list_shows_agent_arguments_and_suites(capsys):
    assert main(["list"]) == 0
    assert "buffer_size=200" in capsys.readouterr().out
    assert main(["leaderboard", "list"]) == 0
    printed = capsys.readouterr().out
    for suite, entries in SUITES.items():
        assert f"{suite}:" in printed and all(entry.folder in printed for entry in entries)
    assert "  independent[dtype=int4,delta=true]" in printed
    assert "-> independent__delta-true__dtype-int4" in printed and "-> naive\n" in printed


# ----------------------------------------------------------------------------- suites
def test_suite_entries_have_distinct_readable_folders_and_can_all_be_made():
    folders = [entry.folder for entries in SUITES.values() for entry in entries]
    assert len(folders) == len(set(folders))
    for entry in (entry for entries in SUITES.values() for entry in entries):
        check_env_kwargs(entry.env_id, entry.kwargs)  # a one-vs-rest domain entry once was not
    domain = SUITES["offline"][3]
    assert (domain.env_id, domain.scenario) == ("clbench/SplitMNIST5k-v0", "domain")
    assert domain.folder == "SplitMNIST5k-v0__scenario-domain"


def test_plan_leaves_out_an_entry_its_environment_refuses_and_says_why(tmp_path):
    impossible = Entry("clbench/OneVsRestMNIST5k-v0", {**TINY.kwargs, "scenario": "domain"})
    planned = sweep.plan(SUITE, [impossible, TINY], ["naive"], [0], tmp_path)
    assert [job.entry for job in planned.jobs] == [TINY]
    [line] = planned.unavailable
    assert line.startswith(f"{impossible.label}: not run: clbench/OneVsRestMNIST5k-v0: "
                           "scenario='domain' needs one labelling across the stream"), line


def test_plan_skips_scenarios_an_agent_does_not_support(tmp_path, monkeypatch):
    domain = SUITES["offline"][3]
    planned = sweep.plan("offline", [domain], ["independent", "test_leaderboard:DomainAgent"],
                         [0], tmp_path)
    if domain.unsupported_kwargs():  # before the scenario kwarg exists: said per entry
        assert planned.jobs == [] and planned.skipped == []
        assert planned.unavailable == [f"{domain.label}: not run: this clbench's environment "
                                       "does not accept scenario"]
    monkeypatch.setattr(Entry, "unsupported_kwargs", lambda self: [])
    planned = sweep.plan("offline", [domain], ["independent", "test_leaderboard:DomainAgent"],
                         [0], tmp_path)
    assert [job.agent.label for job in planned.jobs] == ["test_leaderboard:DomainAgent"]
    assert planned.skipped == [f"{domain.label}: skipped for independent: it supports the "
                               "scenario(s) task, not domain"]


# ----------------------------------------------------------------------------- variants
VARIANT = "independent[dtype=int4,delta=true]"
VARIANT_FOLDER = "independent__delta-true__dtype-int4"


def test_agent_specs_split_outside_brackets_and_parse_like_agent_arg():
    listed = 'naive, independent[dtype=int4,delta=true],x[a=[1,2],b={"c": 3},d="e,]f"],'
    assert split_specs(listed) == ["naive", "independent[dtype=int4,delta=true]",
                                   'x[a=[1,2],b={"c": 3},d="e,]f"]']
    assert parse_spec(VARIANT) == ("independent", {"dtype": "int4", "delta": True})
    assert parse_spec('x[a=[1,2],b={"c": 3},d="e,]f",g=0.5]')[1] == \
        {"a": [1, 2], "b": {"c": 3}, "d": "e,]f", "g": 0.5}
    pairs = ["lr=0.05", "epochs=2", "optimizer=sgd", "delta=true", "name=\"true\""]
    assert parse_spec(f"naive[{','.join(pairs)}]")[1] == parse_assignments(pairs, "--agent-arg")


def test_a_variant_is_named_by_its_canonical_agent_and_non_default_arguments():
    spec = resolve_spec(VARIANT)
    assert (spec.name, spec.kwargs) == ("independent", {"delta": True, "dtype": "int4"})
    assert spec.folder == VARIANT_FOLDER and spec.label == "independent[delta=true,dtype=int4]"
    assert resolve_spec(spec.label) == spec  # the label is a spec of the same variant
    for same in ("independent[delta=true,dtype=int4]", "independent[dtype=int4,delta=true,"
                 "epochs=20]", "baselines.independent:Independent[delta=true,dtype=int4]"):
        assert resolve_spec(same).folder == VARIANT_FOLDER, same
    for name in ("naive", "independent", "random"):  # registered agents keep their folders
        assert resolve_spec(name).folder == name
    assert resolve_spec("independent[dtype=float32,delta=false]").folder == "independent"
    assert resolve_spec("naive[lr=0.05]").folder == "naive__lr-0.05"
    for value, text in (("int4", "k=int4"), ("7", 'k="7"'), ("a,b", 'k="a,b"'), (True, "k=true"),
                        (0.5, "k=0.5"), ([1, 2], "k=[1, 2]")):  # read back as it was written
        assert assignment_text("k", value) == text
        assert parse_assignments([text], "--agent-arg") == {"k": value}
    assert resolve_spec("tests/agents_for_tests.py:ConstantZero").folder == \
        "agents_for_tests__ConstantZero"


def test_the_default_agents_are_every_registered_one_and_the_storage_comparators():
    specs = resolve_specs(default_agents())  # every default is valid; no two share a folder
    assert [spec.label for spec in specs if not spec.kwargs] == sorted(registered_agents())
    assert [spec.label for spec in specs if spec.kwargs] == [
        "independent[dtype=int8]", "independent[dtype=int4]", "independent[delta=true,dtype=int4]"]
    assert len(STORAGE_COMPARATORS) == 3


def test_a_suite_with_its_own_agents_sweeps_those_by_default(tmp_path, capsys):
    assert default_agents("storage") == ["tnen", "independent", *STORAGE_COMPARATORS, "lwf",
                                         "linear"]
    assert default_agents("offline") == default_agents()
    resolve_specs(default_agents("storage"))
    entry = SUITES["storage"][1]
    assert (entry.env_id, entry.kwargs, entry.folder) == (
        "clbench/TupleMNIST5k-v0", {"n_tasks": 100}, "TupleMNIST5k-v0__n_tasks-100")
    planned = sweep.plan("storage", [entry], default_agents("storage"), [0], tmp_path)
    assert sorted({job.path.parent.name for job in planned.jobs}) == sorted(
        spec.folder for spec in resolve_specs(default_agents("storage")))


@pytest.mark.parametrize(("agents", "says"), [
    ("naive,nope", "--agents 'nope': unknown agent 'nope'; registered agents: agem,"),
    ("independent[dtyp=int4]", "independent has no argument dtyp; its arguments and their "
                               "defaults: dtype=float32, int8_scale=channel, delta=false"),
    ("independent[dtype=int3]", "independent refuses these arguments: dtype='int3': choose"),
    ('random[seed="7"]', "random refuses these arguments: manual_seed expected a long"),
    ("independent[dtype]", "'dtype' is not of the form key=value; give name or name[key="),
    ("naive,independent[dtype=int4", "unclosed ']'"),
    ("independent[dtype=int4]]", "unbalanced ']'"),
    ("independent[dtype=int4]x", "'independent[dtype=int4]x' is not an agent spec"),
    ("independent[]", "'independent[]' has empty brackets"),
    ("independent[dtype=int4,dtype=int8]", "sets dtype more than once"),
    ("independent,independent[delta=false]", "both are independent (an argument equal to"),
    ("", "--agents is empty"),
])
def test_bad_agent_specs_are_refused_before_any_run(agents, says, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["leaderboard", "run", "--suite", "offline", "--agents", agents, "--seeds", "0",
                 "--results", str(results), "--quiet"]) == 2
    printed = capsys.readouterr().err
    assert says in printed, printed
    assert not results.exists()


@pytest.fixture(scope="module")
def with_variant(swept, tmp_path_factory) -> Path:
    """The swept results and one run of VARIANT (seed 0) beside them."""
    results = copy_results(swept, tmp_path_factory.mktemp("variant"))
    planned = sweep.plan(SUITE, [TINY], ["naive", VARIANT], [0], results)
    assert [(job.agent.label, job.seed) for job in planned.jobs] == \
        [("independent[delta=true,dtype=int4]", 0)]
    assert sweep.sweep(planned.jobs, device="cpu", progress=False) == []
    return results


def test_a_variant_runs_into_its_own_folder_with_its_arguments(with_variant):
    result = load_result(folder(with_variant, VARIANT_FOLDER) / "seed0.json")
    assert result.status == "complete"
    assert result.agent == {"name": "independent", "kwargs": {"delta": True, "dtype": "int4"}}
    assert result.storage["compression"][-1] > 5  # int4 took effect (fp32: ~1x, int8: ~4x)
    again = sweep.plan(SUITE, [TINY], [VARIANT, "independent"], [0], with_variant)
    assert [job.agent.label for job in again.jobs] == ["independent"]  # not done by the variant
    assert again.done == [folder(with_variant, VARIANT_FOLDER) / "seed0.json"]


def test_a_variant_never_passes_for_another_and_variants_never_share_a_row(with_variant,
                                                                            tmp_path):
    results = copy_results(with_variant, tmp_path)
    variant = folder(results, VARIANT_FOLDER) / "seed0.json"
    (folder(results, "independent")).mkdir()
    shutil.copy(variant, folder(results, "independent") / "seed0.json")  # in the plain folder
    int4 = json.loads(variant.read_text())
    int4["agent"]["kwargs"] = {"dtype": "int4"}  # another variant, in its own folder
    (folder(results, "independent__dtype-int4")).mkdir()
    (folder(results, "independent__dtype-int4") / "seed0.json").write_text(json.dumps(int4))
    planned = sweep.plan(SUITE, [TINY], ["independent", "independent[dtype=int4]"], [0], results)
    assert [job.agent.label for job in planned.jobs] == ["independent"]
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    assert [line for line in report.left_out if "/independent/" in line] == [
        f"{SUITE}/{TINY.folder}/independent/seed0.json: holds a run of agent "
        "independent[delta=true,dtype=int4], not of the folder's agent variant"]
    rows = [row for row in report.rows if row.agent == "independent"]
    assert [(row.arguments, row.label) for row in rows] == [
        ({"delta": True, "dtype": "int4"}, "independent (delta=true, dtype=int4)"),
        ({"dtype": "int4"}, "independent (dtype=int4)")]
    readme = (tmp_path / "board" / "README.md").read_text()
    assert "| independent | delta=true, dtype=int4 |" in readme
    assert "| independent | dtype=int4 |" in readme
    assert spec_label("independent", rows[0].arguments) == resolve_spec(VARIANT).label


# ----------------------------------------------------------------------------- sweeps
def test_a_sweep_writes_one_file_per_run_and_never_redoes_a_complete_one(swept):
    files = sorted(p.relative_to(swept).as_posix() for p in swept.rglob("*.json"))
    assert files == [f"{SUITE}/{TINY.folder}/naive/seed{s}.json" for s in (0, 1)] + \
        [f"{SUITE}/{TINY.folder}/random/seed{s}.json" for s in (0, 1, 2)]
    assert all(load_result(swept / f).status == "complete" for f in files)
    again = sweep.plan(SUITE, [TINY], ["random", "naive"], [0, 1, 2], swept)
    assert [(job.agent.label, job.seed) for job in again.jobs] == [("naive", 2)]
    assert len(again.done) == 5


def test_a_failed_runs_file_names_no_folder_of_this_machine(tmp_path):
    """The agent's traceback in a failed run's file names its files relative to
    placeholders (the file is committed; a rebuild elsewhere must give the same bytes)."""
    problems = run_plan(tmp_path, ["agents_for_tests:RaisesOnSecondTask"], [0])
    assert len(problems) == 1 and "out of ideas" in problems[0]
    written = next(tmp_path.rglob("seed0.json"))
    data = json.loads(written.read_text())
    assert data["status"] == "failed" and "out of ideas" in data["failure"]["traceback"]
    assert '"<clbench-root>/tests/agents_for_tests.py"' in data["failure"]["traceback"]
    text = written.read_text()
    for folder in (ROOT, Path.home(), Path(sys.prefix)):
        assert f"{folder}/" not in text, folder


def test_running_failed_or_malformed_files_are_rerun(swept, tmp_path):
    results = copy_results(swept, tmp_path)
    random = folder(results, "random")
    running = json.loads((random / "seed0.json").read_text())
    running.update(status="running", accuracy=running["accuracy"][:1])
    (random / "seed0.json").write_text(json.dumps(running))
    (random / "seed1.json").write_text("{ not json")
    (random / "seed2.json").unlink()
    planned = sweep.plan(SUITE, [TINY], ["random"], [0, 1, 2], results)
    assert [job.seed for job in planned.jobs] == [0, 1, 2]
    assert sweep.sweep(planned.jobs, device="cpu", progress=False) == []
    for seed in (0, 1, 2):
        assert same_content(random / f"seed{seed}.json", folder(swept, "random") /
                            f"seed{seed}.json")


SWEEP_SCRIPT = """
import sys
from pathlib import Path
from clbench.leaderboard import sweep
from test_leaderboard import SLOW, SUITE, TINY
if __name__ == "__main__":
    planned = sweep.plan(SUITE, [TINY], [SLOW], [0, 1, 2], Path(sys.argv[1]))
    sweep.sweep(planned.jobs, device="cpu", progress=False)
"""
# The same sweep, whose driver is stopped (SIGTERM to itself) just after it wrote its first
# result: the window between two waits on the pool, where a stop once let the pool run on
STOPPED_WHILE_WRITING = SWEEP_SCRIPT.replace("if __name__", """import os, signal
write = sweep.write_json_atomic
def write_then_stop(path, payload):
    write(path, payload)
    os.kill(os.getpid(), signal.SIGTERM)
sweep.write_json_atomic = write_then_stop
if __name__""")
# random, slower: a sweep of it is surely mid-way when it is stopped after its first run
SLOW = "agents_for_tests:SlowRandom"


def _marked_processes(marker: str) -> list[int]:
    """Pids of the processes whose environment holds ``marker`` (inherited by children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("stop", ["SIGINT to the group", "SIGTERM to the driver",
                                  "SIGTERM while the driver writes"])
def test_a_sweep_killed_midway_and_rerun_gives_the_files_of_an_uninterrupted_one(
        swept, tmp_path, stop):
    """Ctrl-C reaches the driver and its pool; ``kill`` reaches the driver alone, and its
    pool's processes must not run on (they once took the next queued runs, driverless),
    wherever the driver is when the signal comes."""
    results = tmp_path / "results"
    script = tmp_path / "sweep_script.py"
    script.write_text(STOPPED_WHILE_WRITING if stop == "SIGTERM while the driver writes"
                      else SWEEP_SCRIPT)
    marker = f"CLBENCH_TEST_MARKER_{uuid.uuid4().hex}"
    environment = {**os.environ, marker: "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script), str(results)], env=environment,
                               start_new_session=True, stderr=subprocess.DEVNULL)
    def finished() -> list[Path]:  # runs write their file as they go: count complete ones
        return [path for path in sorted(results.rglob("seed*.json"))
                if load_result(path).status == "complete"]

    deadline = time.monotonic() + 240
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.05)
    if stop == "SIGINT to the group":
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the driver and its workers
    elif stop == "SIGTERM to the driver":
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _marked_processes(marker) == []
    done = finished()
    assert 1 <= len(done) < 3, "the sweep was not interrupted mid-way"
    again = sweep.plan(SUITE, [TINY], [SLOW], [0, 1, 2], results)
    assert len(again.done) == len(done) and len(again.jobs) == 3 - len(done)
    # the rest two at a time: a rerun's files do not depend on how many run at once
    assert sweep.sweep(again.jobs, device="cpu", progress=False, workers=2) == []
    slow = next(results.rglob("seed0.json")).parent
    for seed in (0, 1, 2):  # random's files but for the agent's name
        assert same_content(slow / f"seed{seed}.json",
                            folder(swept, "random") / f"seed{seed}.json",
                            tuple(key for key in SAME if key != "agent"))


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_run_another_sweep_is_writing_is_left_to_it(tmp_path, hold_elsewhere, backend):
    """A second sweep on the same results folder does not run what the first is running (a
    local run holds its file itself; for a Ray run, which writes nothing, the driver does)."""
    job = sweep.plan(SUITE, [TINY], ["random"], [0], tmp_path).jobs[0]
    holder = hold_elsewhere(job.path)
    [problem] = sweep.sweep([job], device="cpu", progress=False, backend=backend)
    assert problem.startswith(f"{TINY.label} random seed 0: {job.path} is being written by "
                              f"another run (process {holder.pid} on "), problem
    assert sorted(job.path.parent.iterdir()) == [lock_for(job.path)]  # the holder's alone


def test_a_dry_run_says_what_each_files_holds_and_touches_none(swept, tmp_path,
                                                               hold_elsewhere, capsys):
    results = copy_results(swept, tmp_path)
    bad = corrupt(results)  # naive: seed7 failed after 1/2 tasks, seed8 holds seed 9's run
    random = folder(results, "random")
    killed = after_first_task(json.loads((random / "seed0.json").read_text()))
    (random / "seed0.json").write_text(json.dumps(killed))
    (random / "seed0.json.ckpt").mkdir()
    (random / "seed1.json").write_text("{ not json")
    (folder(results, "naive") / "seed9.json").write_text(json.dumps(after_first_task(
        json.loads((folder(results, "naive") / "seed0.json").read_text()))))
    planned = sweep.plan(SUITE, [TINY], ["random", "naive"], [0, 1, 2, 3, 7, 8, 9], results)
    holder = hold_elsewhere(folder(results, "naive") / "seed3.json")
    before = {path: path.read_bytes() for path in results.rglob("*") if path.is_file()}
    said = {(job.agent.label, job.seed): sweep.describe(job) for job in planned.jobs}
    assert said[("random", 0)] == (
        "unfinished after 1/2 tasks, and no live run holds it; a checkpoint is there: resumed "
        "from it if it is this run's, else started afresh")
    assert said[("random", 1)].startswith("not a valid result (") and \
        said[("random", 1)].endswith("); replaced") and str(results) not in said[("random", 1)]
    assert said[("random", 3)] == said[("naive", 2)] == "new"
    assert said[("naive", 3)].startswith("running now, left to it (") and \
        f"process {holder.pid} on " in said[("naive", 3)]
    assert said[("naive", 7)] == "failed after 1/2 tasks: boom; no checkpoint: started afresh"
    assert said[("naive", 8)].startswith("holds another run")  # complete, of seed 9
    assert said[("naive", 9)].startswith("holds another run")  # unfinished, of seed 0
    assert len(bad) == 5 and len(said) == 14 - 3  # random 2, naive 0 and 1 are done
    assert {path: path.read_bytes() for path in results.rglob("*") if path.is_file()} == before
    assert main(["leaderboard", "run", "--suite", "offline", "--entry", "SplitMNIST5k-v0",
                 "--agents", "random", "--seeds", "0", "--results", str(tmp_path / "new"),
                 "--dry-run"]) == 0
    path = tmp_path / "new" / "offline" / "SplitMNIST5k-v0" / "random" / "seed0.json"
    assert capsys.readouterr().out == f"{path}: new\n" and not (tmp_path / "new").exists()
    assert main(["leaderboard", "run", "--suite", "offline", "--entry", "OneVsRestMNIST5k-v0",
                 "--env-arg", 'scenario="domain"', "--agents", "naive", "--seeds", "0",
                 "--results", str(tmp_path / "new"), "--dry-run"]) == 1  # cannot be made
    assert "scenario='domain' needs one labelling" in capsys.readouterr().err


def test_ray_backend_gives_the_files_of_the_local_pool(swept, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'clbench[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_plan(tmp_path, ["random", "naive", "random[seed=1]"], [0],
                        backend="ray") == []
    finally:
        ray.shutdown()
    for agent in ("random", "naive"):
        ours = load_result(folder(tmp_path, agent) / "seed0.json")
        local = load_result(folder(swept, agent) / "seed0.json")
        assert ours.accuracy == local.accuracy  # bitwise, on CPU
        assert ours.storage["bytes"] == local.storage["bytes"]
    variant = load_result(folder(tmp_path, "random__seed-1") / "seed0.json")  # kwargs passed
    assert variant.agent == {"name": "random", "kwargs": {"seed": 1}}


def test_a_job_that_cannot_start_is_reported_and_the_sweep_goes_on(tmp_path):
    broken = Entry("clbench/OneVsRestMNIST5k-v0", {**TINY.kwargs, "positive_fraction": 7})
    jobs = [sweep.Job(broken, resolve_spec("random"), 0, tmp_path / "a.json")]
    problems = sweep.sweep(jobs, device="cpu", progress=False)
    assert len(problems) == 1 and "positive_fraction" in problems[0]
    assert not (tmp_path / "a.json").exists()


# ----------------------------------------------------------------------------- build
def after_first_task(complete: dict) -> dict:
    """A complete 2-task result as its file was after the first task (status running)."""
    return {**complete, "status": "running", "accuracy": complete["accuracy"][:1],
            "agent_metrics": [{}], "reproducible": complete["reproducible"][:1],
            "storage": {k: v[:1] for k, v in complete["storage"].items()},
            "costs": {k: v[:1] for k, v in complete["costs"].items() if isinstance(v, list)}}


def corrupt(results: Path) -> dict[str, str]:
    """Bad files next to the good ones; name -> what the build must say about it."""
    naive = folder(results, "naive")
    good = json.loads((naive / "seed0.json").read_text())
    bad = {}

    def write(name: str, payload: dict, says: str) -> None:
        (naive / name).write_text(json.dumps(payload))
        bad[f"{SUITE}/{TINY.folder}/naive/{name}"] = says

    write("seed5.json", {k: v for k, v in good.items() if k != "metrics"}, "'metrics'")
    write("seed6.json", {**good, "seed": 6, "schema": "clbench.result/0"}, "schema")
    write("seed7.json", {**after_first_task(good), "seed": 7, "status": "failed",
                         "error": "boom", "failure": {"kind": "agent_error", "stage": "learn",
                                                      "task_id": 1, "traceback": None}},
          "status failed after 1/2")
    write("seed8.json", {**good, "seed": 9}, "holds seed 9")
    (naive / "notes.json").write_text("{}")
    bad[f"{SUITE}/{TINY.folder}/naive/notes.json"] = "not in the layout"
    return bad


def test_build_leaves_out_bad_files_by_name_and_shows_the_rest(swept, tmp_path):
    results = copy_results(swept, tmp_path)
    bad = corrupt(results)
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    assert [(row.agent, row.seeds) for row in report.rows] == [("naive", [0, 1]),
                                                                ("random", [0, 1, 2])]
    assert len(report.left_out) == len(bad)
    for name, says in bad.items():
        assert any(line.startswith(name) and says in line for line in report.left_out), name
    readme = (tmp_path / "board" / "README.md").read_text()
    assert "| - |" not in readme and "status failed after 1/2 tasks: boom" in readme
    assert readme.count("| naive | defaults |") == 1


def test_build_lists_sealed_results_only(swept, tmp_path):
    results = copy_results(swept, tmp_path)
    report = build(results, tmp_path / "board")
    if not SEALED:  # no sandbox here: every run is unsealed, so every one is left out, by name
        assert report.rows == [] and len(report.left_out) == 5
        assert all("not sealed" in line for line in report.left_out)
        return
    unsealed = folder(results, "random") / "seed1.json"
    unsealed.write_text(json.dumps({**json.loads(unsealed.read_text()), "sealed": False}))
    report = build(results, tmp_path / "board")
    assert [row.seeds for row in report.rows] == [[0, 1], [0, 2]]
    assert any("random/seed1.json: not sealed" in line for line in report.left_out)


def test_build_refuses_to_mix_stream_specs_in_a_row_and_names_the_files(swept, tmp_path):
    results = copy_results(swept, tmp_path)
    other = folder(results, "random") / "seed2.json"
    payload = json.loads(other.read_text())
    payload["env"]["kwargs"]["max_train_per_task"] = 39
    other.write_text(json.dumps(payload))
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    assert [row.agent for row in report.rows] == ["naive"]
    refusal = [line for line in report.left_out if "refused to mix" in line]
    assert len(refusal) == 1 and "random/seed2.json" in refusal[0] \
        and "random/seed0.json" in refusal[0]


def test_seeds_may_draw_other_tasks_but_one_seed_gives_every_agent_the_same(swept, tmp_path):
    """A tuple stream draws its tasks from the seed: a row averages over those streams. A run
    given other tasks than the other agents' runs of its seed is left out by name."""
    results = copy_results(swept, tmp_path)

    def rename_tasks(path: Path, prefix: str) -> None:
        payload = json.loads(path.read_text())
        payload["env"]["task_names"] = [f"{prefix}{name}" for name in payload["env"]["task_names"]]
        path.write_text(json.dumps(payload))

    for agent in ("random", "naive"):  # seed 1 drew other tasks, for every agent alike
        rename_tasks(folder(results, agent) / "seed1.json", "drawn-by-seed-1:")
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    assert sorted(row.agent for row in report.rows) == ["naive", "random"]
    assert [row.seeds for row in report.rows if row.agent == "random"] == [[0, 1, 2]]
    rename_tasks(folder(results, "random") / "seed0.json", "only-random-saw:")
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    seeds = {row.agent: row.seeds for row in report.rows}
    assert seeds == {"random": [1, 2], "naive": [1]}  # seed 0: no stream most runs saw
    refusal = sorted(line for line in report.left_out if "saw other tasks" in line)
    assert len(refusal) == 2 and "naive/seed0.json" in refusal[0] \
        and "random/seed0.json" in refusal[1] and "other runs of seed 0" in refusal[1]


def test_rebuild_is_byte_identical_wherever_it_runs(swept, tmp_path):
    outputs = []
    for name in ("one", "two"):
        results = copy_results(swept, tmp_path / name)
        build(results, tmp_path / name / "board", allow_unsealed=not SEALED)
        board = tmp_path / name / "board"
        outputs.append({p.relative_to(board).as_posix(): p.read_bytes()
                        for p in sorted(board.rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1]
    assert len([name for name in outputs[0] if name.endswith(".png")]) == 4
    assert str(tmp_path).encode() not in outputs[0]["index.html"] + outputs[0]["README.md"]


def test_committed_leaderboard_is_what_build_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    readme = ROOT / "README.md"
    copy = tmp_path / "README.md.copy"
    copy.write_text(readme.read_text())
    build(Path("leaderboard/results"), tmp_path / "out", readme=copy)
    for name in ("README.md", "index.html"):
        assert (tmp_path / "out" / name).read_bytes() == \
            (ROOT / "leaderboard" / name).read_bytes(), \
            f"leaderboard/{name} is stale: run `make leaderboard`"
    assert copy.read_text() == readme.read_text(), "README.md's table is stale: make leaderboard"


def test_build_fills_every_suite_a_readme_marks_and_needs_the_offline_one(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:storage -->\nold\n<!-- /leaderboard:storage -->\n"
                      "middle\n<!-- leaderboard:offline -->\nold\n<!-- /leaderboard:offline -->\n"
                      "end\n")
    build(tmp_path / "no-results", tmp_path / "out", readme=readme)
    filled = readme.read_text()
    assert "old" not in filled and filled.startswith("intro\n") and filled.endswith("end\n")
    for suite in ("storage", "offline"):
        assert f"No results of the `{suite}` suite yet" in filled
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="lacks the markers <!-- leaderboard:offline -->"):
        build(tmp_path / "no-results", tmp_path / "out", readme=readme)


# ----------------------------------------------------------------------------- aggregation
def test_a_suites_entries_without_results_are_named_with_the_command_that_runs_them():
    offline = SUITES["offline"]
    one = SimpleNamespace(section=f"offline · {offline[0].label}")
    line = not_run([one], "offline")
    assert f"--entry {offline[0].folder}`" not in line
    for entry in offline[1:]:
        assert f"{entry.label} (`clbench leaderboard run --suite offline --entry " \
               f"{entry.folder}`)" in line
    assert not_run([SimpleNamespace(section=f"offline · {e.label}") for e in offline],
                   "offline") == "" == not_run([one], SUITE)  # complete, or no known suite


def test_seeds_aggregate_to_mean_std_and_t_interval():
    summary = aggregate.Summary.of([0.8, 0.9, 1.0])
    assert summary.mean == pytest.approx(0.9) and summary.std == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / 3 ** 0.5  # t(0.975, 2 dof)
    assert (summary.low, summary.high) == pytest.approx((0.9 - half, 0.9 + half))
    assert aggregate.Summary.of([0.5]).std is None


def test_the_acc_interval_shown_stays_within_zero_and_one():
    row = aggregate.Row("stream", "agent", {}, [])
    row.figures = {key: aggregate.Summary.of([1.0, 0.9, 1.0]) for key in aggregate.FIGURES}
    assert row.figures["acc"].high > 1  # the t-interval itself: 0.967 +- 0.143
    interval = row_cells(row)[aggregate.COLUMNS.index("ACC 95% CI")]
    assert interval == f"[{row.figures['acc'].low:.3f}, 1.000]"


def test_flops_not_counted_when_learn_ran_outside_torch(swept):
    runs = [aggregate.Run(str(p), load_result(p))
            for p in sorted(folder(swept, "random").glob("*.json"))]
    rows, _ = aggregate.group(runs, lambda run: "s")
    assert rows[0].flops_counted  # random: 0 FLOPs in no time: it does nothing
    for run in runs:  # 0 FLOPs in 0.2 s per task: the work was not torch
        run.result.costs["learn_seconds"] = [0.2] * len(run.result.accuracy)
    rows, _ = aggregate.group(runs, lambda run: "s")
    assert aggregate.row_cells(rows[0])[aggregate.COLUMNS.index("learn GFLOP/task")] \
        == "not counted"


def test_table_groups_seeds_and_shows_arguments(swept, tmp_path, capsys):
    results = copy_results(swept, tmp_path)
    tuned = folder(results, "naive") / "seed1.json"
    payload = json.loads(tuned.read_text())
    payload["agent"]["kwargs"] = {"epochs": 1}
    tuned.write_text(json.dumps(payload))
    assert main(["table", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "| naive | defaults |" in printed and "| naive | epochs=1 |" in printed
    assert "| random | defaults |" in printed and "| 0,1,2 |" in printed
    assert main(["table", "--format", "csv", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stream,agent,arguments") and len(lines) == 4
    assert main(["table", "--format", "latex", str(results)]) == 0
    assert r"\begin{tabular}" in capsys.readouterr().out


def test_sparse_runs_get_their_own_marked_row_in_table_and_build(swept, tmp_path, capsys):
    results = copy_results(swept, tmp_path)
    sparse = folder(results, "naive") / "seed1.json"
    sparse.write_text(json.dumps({**json.loads(sparse.read_text()), "eval_every": 2,
                                  "eval_note": "R every 2: ..."}))
    assert main(["table", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "| naive | defaults |" in printed and "| naive | defaults; R every 2 |" in printed
    assert main(["table", "--format", "csv", str(results)]) == 0
    naive = [line for line in capsys.readouterr().out.splitlines() if ",naive," in line]
    assert sorted(line.split(",")[3] for line in naive) == ["1", "2"]  # eval_every column
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    assert [(row.agent, row.eval_every, row.seeds) for row in report.rows
            if row.agent == "naive"] == [("naive", 1, [0]), ("naive", 2, [1])]
    readme = (tmp_path / "board" / "README.md").read_text()
    assert "defaults; R every 2" in readme and "R every N (in arguments)" in readme


def test_leaderboard_run_reports_an_unknown_suite(capsys):
    assert main(["leaderboard", "run", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the page
BROWSER = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]


def test_page_renders_sorts_and_shows_every_plot_in_headless_chromium(swept, tmp_path):
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not Path(BROWSER).exists():
        pytest.skip(f"no browser at {BROWSER} (Debian: apt-get install chromium)")
    results = copy_results(swept, tmp_path)
    report = build(results, tmp_path / "board", allow_unsealed=not SEALED)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=BROWSER, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto((tmp_path / "board" / "index.html").as_uri())
            agents = page.eval_on_selector_all("table.sortable tbody tr td:first-child",
                                               "cells => cells.map(c => c.textContent)")
            assert agents == [row.agent for row in report.rows]  # one row per (entry, agent)
            widths = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
            assert len(widths) == 4 and all(width > 0 for width in widths)
            column = aggregate.COLUMNS.index("final bytes")
            header = page.locator("table.sortable th").nth(column)
            values = f"rows => rows.map(r => Number(r.cells[{column}].dataset.value))"
            for order in (sorted, lambda v: sorted(v, reverse=True)):
                header.click()
                shown = page.eval_on_selector_all("table.sortable tbody tr", values)
                assert shown == order(shown)
            assert page.eval_on_selector_all("table.sortable tbody tr td:first-child",
                                             "c => c.map(x => x.textContent)") == ["naive",
                                                                                   "random"]
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000


def test_the_accuracy_bytes_plot_draws_its_own_front_and_stars_the_tables():
    """The plot's line is the front of its two axes; the legend's ★ is the table's
    three-axis mark, so a cheap-to-learn agent beaten on ACC and bytes keeps its ★ off the
    line (as the int4 copies did at 100 tuple tasks)."""
    from clbench.leaderboard import plots

    def row(agent, acc, size, gflop):
        made = aggregate.Row("s", agent, {}, [])
        made.figures = {"acc": aggregate.Summary.of([acc]), "bytes": aggregate.Summary.of([size]),
                        "gflop_per_task": aggregate.Summary.of([gflop])}
        return made

    rows = [row("big", 0.99, 1000.0, 5.0), row("small", 0.90, 10.0, 5.0),
            row("beaten", 0.95, 2000.0, 1.0), row("worse", 0.85, 500.0, 9.0)]
    aggregate._mark_pareto(rows)
    assert [r.pareto for r in rows] == [True, True, True, False]
    figure = plots.pareto_plot(rows)
    line = figure.axes[0].lines[-1]
    assert list(line.get_xdata()) == [10.0, 1000.0] and list(line.get_ydata()) == [0.90, 0.99]
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["big ★", "small ★", "beaten ★", "worse"]
    plots.plt.close(figure)


def test_plot_texts_stay_inside_their_figure_and_apart():
    """The plots' geometry is fixed, not found by a layout engine: on the committed
    results' largest grid (16 panels), longest stream (100 tasks) and one panel alone, every
    label longer than any agent's (cut to two lines), no title, tick label, axis label or
    legend leaves its figure, and none runs into another panel or its texts."""
    from itertools import combinations

    from clbench.leaderboard import plots
    from clbench.leaderboard.build import collect, section_of

    def shown_tick_labels(axis) -> list:  # a locator may place ticks beyond the limits
        low, high = sorted(axis.get_view_interval())
        return [tick.label1 for tick in axis.get_major_ticks()
                if low - 1e-9 <= tick.get_loc() <= high + 1e-9]

    runs, _ = collect(ROOT / "leaderboard" / "results", allow_unsealed=False)
    rows, _ = aggregate.group(runs, lambda run: section_of(run.path))
    by_section: dict[str, list] = {}
    for row in rows:
        by_section.setdefault(row.section, []).append(row)
    widest = max(by_section.values(), key=len)
    longest = max(by_section.values(), key=lambda members: len(members[0].task_names))
    assert len(widest) >= 16 and len(longest[0].task_names) >= 100
    for index, row in enumerate(widest):
        row.arguments = {"a_long_argument_name": "wide" * (index % 3 + 1), "another": 12345,
                         "and_a_third": [1, 2, 3]}
    for members in (widest, longest, widest[-1:]):
        for make in (plots.heatmaps, plots.curves, plots.bytes_plot, plots.pareto_plot):
            with plots.matplotlib.rc_context(plots.STYLE):
                figure = make(members)
                figure.canvas.draw()  # places the axis labels beside their tick labels
                renderer = figure.canvas.get_renderer()
                page = figure.bbox
                boxes, panels = [], []
                for index, axis in enumerate(figure.axes):
                    if not axis.get_visible():
                        continue
                    panels.append((index, axis.get_window_extent(renderer)))
                    texts = [axis.title, axis.xaxis.label, axis.yaxis.label,
                             *shown_tick_labels(axis.xaxis), *shown_tick_labels(axis.yaxis)]
                    shown = [(text.get_text(), text) for text in texts
                             if text.get_visible() and text.get_text()]
                    legend = axis.get_legend()
                    for name, artist in shown + ([("legend", legend)] if legend else []):
                        box = artist.get_window_extent(renderer)
                        assert page.x0 <= box.x0 and box.x1 <= page.x1 and \
                            page.y0 <= box.y0 and box.y1 <= page.y1, (make.__name__, name)
                    boxes += [(index, name, text.get_window_extent(renderer))
                              for name, text in shown]  # a legend lies on its own panel
                plots.plt.close(figure)
            for (one, text, box), (two, other, box2) in combinations(boxes, 2):
                assert one == two or not box.overlaps(box2), (make.__name__, text, other)
            for index, text, box in boxes:
                assert not any(box.overlaps(panel) for other, panel in panels
                               if other != index), (make.__name__, text)
