"""Sweeps: every (suite entry, agent variant, seed) run, on a local process pool or a Ray
cluster.

Agents are given as specs (:mod:`clbench.leaderboard.variants`): a name, or a name with
constructor arguments such as ``independent[dtype=int4,delta=true]``; without a list, a
sweep runs :func:`clbench.leaderboard.suites.default_agents` of the suite. Each run writes
``<results>/<suite>/<entry folder>/<agent folder>/seed<k>.json``, the agent folder naming the
variant (``independent``, ``independent__delta-true__dtype-int4``). A file that is
complete and valid is never redone; a missing, running, failed, interrupted or malformed
one is rerun, so a sweep that was killed mid-way loses only its unfinished runs and the
next invocation of the same command picks up the rest. A run that another live process is
writing (a second sweep on the same results folder) is left to it and reported as not done
by this sweep (:func:`clbench.checkpoint.hold`).

Both backends call the same :func:`run_job` (which calls :func:`clbench.evaluate`) and hand
the result back to the driver, which alone writes the files: so the files of a Ray sweep
land on the driver's disk whichever node ran them, and are identical to a local sweep's
(each run uses ``threads`` torch threads on CPU, the same on both backends, so CPU results
match bitwise).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
import sysconfig
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clbench.agent import canonical_agent_name, load_agent_class, supported_scenarios
from clbench.checkpoint import RunInProgress, check_not_held, folder_for, hold
from clbench.env.registration import check_env_kwargs
from clbench.leaderboard.suites import Entry
from clbench.leaderboard.variants import AgentSpec, resolve_specs
from clbench.results import ResultFormatError, load_result, write_json_atomic
from clbench.sealed.zygote import PR_SET_PDEATHSIG, prctl

DEFAULT_RESULTS = Path("leaderboard") / "results"
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One run: the variant ``agent`` on ``entry`` with ``seed``, written to ``path``."""

    entry: Entry
    agent: AgentSpec
    seed: int
    path: Path

    def request(self, device: str, threads: int, resumable: bool = False) -> dict[str, Any]:
        """The job as plain values (what a worker process or a Ray task receives). A
        ``resumable`` job writes its own file and checkpoint as it goes (local backend: the
        same disk), so an interrupted run continues from its last finished task."""
        return {"agent": self.agent.agent, "agent_kwargs": dict(self.agent.kwargs),
                "env_id": self.entry.env_id,
                "env_kwargs": dict(self.entry.kwargs), "seed": self.seed, "device": device,
                "threads": threads, "out": str(self.path) if resumable else None}


@dataclass
class Plan:
    """What a sweep will do: jobs to run, and what it leaves out and why."""

    jobs: list[Job]
    done: list[Path]
    skipped: list[str]  # one line per (entry, agent) whose scenario the agent lacks
    unavailable: list[str]  # one line per entry this clbench's environment cannot make


def result_path(root: Path, suite: str, entry: Entry, agent: AgentSpec, seed: int) -> Path:
    return Path(root) / suite / entry.folder / agent.folder / f"seed{seed}.json"


def is_complete(path: Path, job: Job) -> bool:
    """True when ``path`` holds a valid, complete result of exactly this job."""
    try:
        result = load_result(path)
    except (ResultFormatError, OSError, TypeError, ValueError):
        return False
    return result.status == "complete" and _of_job(result, job)


def _of_job(result, job: Job) -> bool:
    """Whether ``result`` (complete or not) is a run of ``job``: its env, kwargs, agent and
    seed."""
    return (result.seed == job.seed and result.env["id"] == job.entry.env_id
            and all(result.env["kwargs"].get(k) == v for k, v in job.entry.kwargs.items())
            and canonical_agent_name(result.agent["name"]) == job.agent.name
            and result.agent["kwargs"] == job.agent.kwargs)


def describe(job: Job) -> str:
    """What a sweep would find in ``job``'s file (what ``--dry-run`` prints): nothing yet,
    another process's live run, another run's file, or an unfinished run of this one with
    its finished tasks and whether a checkpoint is there (a local sweep resumes from it when
    it passes the resume checks of :func:`clbench.evaluate`, else starts afresh)."""
    try:
        check_not_held(job.path)
    except RunInProgress as running:
        return f"running now, left to it ({running})"
    if not job.path.exists():
        return "new"
    try:
        result = load_result(job.path)
    except (ResultFormatError, OSError, TypeError, ValueError) as error:
        return f"not a valid result ({str(error).replace(f'{job.path}: ', '')}); replaced"
    if not _of_job(result, job):
        return "holds another run (entry, agent, arguments or seed differ); replaced"
    done = f"{result.n_tasks_done}/{len(result.env['task_names'])} tasks"
    how = ("; a checkpoint is there: resumed from it if it is this run's, else started afresh"
           if folder_for(job.path).is_dir() else "; no checkpoint: started afresh")
    if result.status == "running":  # its run ended without a final status: it was killed
        return f"unfinished after {done}, and no live run holds it{how}"
    why = f": {result.error.splitlines()[0]}" if result.error else ""
    return f"{result.status} after {done}{why}{how}"


def plan(suite: str, entries: Sequence[Entry], agents: Sequence[str], seeds: Sequence[int],
         root: Path) -> Plan:
    """The jobs of a sweep of the agent specs ``agents``, leaving out finished runs, entries
    this clbench's environment cannot make and entries whose scenario an agent does not
    support. A bad spec raises ValueError before anything is planned."""
    jobs, done, skipped, unavailable = [], [], [], []
    specs = resolve_specs(agents)
    scenarios_of = {spec.agent: supported_scenarios(load_agent_class(spec.agent))
                    for spec in specs}
    for entry in entries:
        unsupported = entry.unsupported_kwargs()
        if unsupported:
            unavailable.append(f"{entry.label}: not run: this clbench's environment does "
                               f"not accept {', '.join(unsupported)}")
            continue
        try:
            check_env_kwargs(entry.env_id, entry.kwargs)
        except ValueError as error:
            unavailable.append(f"{entry.label}: not run: {error}")
            continue
        for agent in specs:
            scenarios = scenarios_of[agent.agent]
            if entry.scenario not in scenarios:
                skipped.append(f"{entry.label}: skipped for {agent.label}: it supports the "
                               f"scenario(s) {', '.join(scenarios)}, not {entry.scenario}")
                continue
            for seed in seeds:
                job = Job(entry, agent, seed, result_path(root, suite, entry, agent, seed))
                (done.append(job.path) if is_complete(job.path, job) else jobs.append(job))
    return Plan(jobs, done, skipped, unavailable)


# True in a local pool's process: an interrupted run ends the process, not only the run
_IN_LOCAL_POOL = False


def _start_pool_process() -> None:
    """Initialiser of a local pool's processes: each dies with the sweep. The kernel sends
    it SIGTERM when the driver ends, however it ends (Linux), which ends its run as
    interrupted; :func:`run_job` then exits instead of taking the next queued run."""
    global _IN_LOCAL_POOL
    _IN_LOCAL_POOL = True
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_job(request: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return ``{"result": dict | None, "error": str | None}``.

    A run that fails in the agent returns its result (status failed, finished tasks kept)
    and the error; one that cannot start (e.g. the stream's data is missing) returns no
    result. Runs in a worker process (local pool) or a Ray task. An interrupted run (SIGINT,
    SIGTERM) has written its file as interrupted; a local pool's process then exits.
    """
    import torch

    import clbench
    from clbench.harness import AgentError

    torch.set_num_threads(request["threads"])
    try:
        result = clbench.evaluate(request["agent"], request["env_id"], seed=request["seed"],
                                  device=request["device"], env_kwargs=request["env_kwargs"],
                                  agent_kwargs=request["agent_kwargs"],
                                  out=request["out"], resume="auto" if request["out"] else False)
    except AgentError as error:
        return {"result": error.result.to_dict() if error.result else None, "error": str(error)}
    except KeyboardInterrupt:
        if _IN_LOCAL_POOL:
            os._exit(128 + signal.SIGINT)
        raise
    except RunInProgress as error:  # another sweep's run of the same file: left to it
        return {"result": None, "error": str(error)}
    except Exception as error:  # the job is reported and the sweep goes on with the others
        return {"result": None, "error": f"{type(error).__name__}: {error}"}
    return {"result": result.to_dict(),
            "error": None if result.status == "complete" else result.error}


def sweep(jobs: Sequence[Job], device: str = "auto", backend: str = "local", workers: int = 1,
          threads: int = 1, address: str | None = None, progress: bool = True) -> list[str]:
    """Run ``jobs`` and write their files; return one line per job that did not complete.

    ``workers`` runs at a time locally; on Ray, each run asks for ``threads`` CPUs (and one
    GPU when ``device`` is ``cuda``) and the cluster schedules them.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if workers < 1 or threads < 1:
        raise ValueError(f"--workers and --threads must be at least 1, got {workers}, {threads}")
    problems: list[str] = []
    with contextlib.ExitStack() as held, tqdm(total=len(jobs), desc="sweep", unit="run",
                                              disable=None if progress else True) as bar:
        # A local run holds its own file while it runs (clbench.checkpoint.hold); a Ray
        # run writes nothing itself, so the driver holds its file from now until it is written.
        locks: dict[int, contextlib.ExitStack] = {}
        if backend == "ray":
            for index, job in enumerate(jobs):
                lock = contextlib.ExitStack()
                try:
                    lock.enter_context(hold(job.path))
                except RunInProgress as error:
                    problems.append(_problem(job, str(error)))
                    bar.update(1)
                    continue
                locks[index] = held.enter_context(lock)
        runnable = list(locks) if backend == "ray" else list(range(len(jobs)))
        requests = [jobs[index].request(device, threads, resumable=backend == "local")
                    for index in runnable]
        outcomes = (_run_ray(requests, device, threads, address) if backend == "ray"
                    else _run_local(requests, workers))
        # closing: an interruption that lands here, while a finished run's file is written
        # rather than inside the generator, must still stop the pool at once; left to the
        # garbage collector, the pool's exit handler first let it run the running and queued
        # runs
        with contextlib.closing(outcomes):
            for position, outcome in outcomes:
                index = runnable[position]
                job = jobs[index]
                if outcome["result"] is not None:
                    payload = without_machine_paths(outcome["result"])
                    if index in locks:
                        write_json_atomic(job.path, payload)
                    else:
                        _write_held(job.path, payload)
                if index in locks:
                    locks.pop(index).close()
                if outcome["error"]:
                    problems.append(_problem(job, outcome["error"]))
                bar.update(1)
    return problems


def _problem(job: Job, error: str) -> str:
    return f"{job.entry.label} {job.agent.label} seed {job.seed}: {error}"


def _write_held(path: Path, payload: dict[str, Any]) -> None:
    """Rewrite a local run's file (machine paths taken out) unless another run has taken it
    since: its own writes then stand for it."""
    with contextlib.suppress(RunInProgress), hold(path):
        write_json_atomic(path, payload)


def machine_places() -> list[tuple[str, str]]:
    """(folder, placeholder) for the folders of this machine that an agent's traceback
    names, the longest first: the folder clbench is imported from (a checkout, or
    site-packages), site-packages, the virtual environment, the Python install, home."""
    import clbench

    places = {str(Path(clbench.__file__).resolve().parents[1]): "<clbench-root>",
              str(Path.home()): "~", sys.base_prefix: "<python>", sys.prefix: "<venv>"}
    for key in ("purelib", "platlib"):
        places[sysconfig.get_paths()[key]] = "<site-packages>"
    return sorted(((folder.rstrip("/") + "/", name + "/") for folder, name in places.items()
                   if len(folder) > 1), key=lambda pair: -len(pair[0]))


def without_machine_paths(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with this machine's folders in ``error`` and ``failure`` (a failed run's
    message and the agent's traceback) written as placeholders (:func:`machine_places`):
    a sweep's files are committed and rebuilt elsewhere, and must not carry one machine's
    paths."""
    places = machine_places()

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for folder, name in places:
                value = value.replace(folder, name)
            return value
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        return value

    return {**result, "error": scrub(result.get("error")), "failure": scrub(result.get("failure"))}


def _run_local(requests: list[dict], workers: int) -> Iterable[tuple[int, dict]]:
    """Yield (index, outcome) as runs finish in a pool of fresh (spawned) processes."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_start_pool_process) as pool, \
            _terminate_as_interrupt():
        futures = {pool.submit(run_job, request): index for index, request in enumerate(requests)}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            # interrupted: drop the queued runs (the pool cancels them itself: a future
            # cancelled here raised InvalidStateError in its thread once the pool broke);
            # the running ones end with the pool
            running = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in running:
                process.terminate()
            raise


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM to the driver acts as Ctrl-C (in the main thread): the pool's processes are
    stopped and their runs end as interrupted, instead of running on without a driver."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_number, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_ray(requests: list[dict], device: str, threads: int,
             address: str | None) -> Iterable[tuple[int, dict]]:
    """Yield (index, outcome) as Ray tasks finish, one task per run."""
    if not requests:
        return  # every job was refused: no cluster to start or join
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install 'clbench[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": {"CLBENCH_DATA": os.environ["CLBENCH_DATA"]}}
                 if "CLBENCH_DATA" in os.environ else None)
    task = ray.remote(num_cpus=threads, num_gpus=1 if device.startswith("cuda") else 0)(run_job)
    pending = {task.remote(request): index for index, request in enumerate(requests)}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
