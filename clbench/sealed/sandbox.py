"""The bubblewrap sandbox that sealed workers run in, where Linux and ``bwrap`` allow it.

Inside: no network (``--unshare-net``), the whole filesystem read-only (``--ro-bind / /``,
``/dev`` remounted read-only), fresh ``/proc`` in a new PID namespace (the harness and its
memory are not visible), a private empty ``/tmp`` (the zygote wipes it after every worker),
and every dataset source hidden: the data roots, Debian's ``/usr/share/datasets`` and the
folder of the installed mnist5k file. ``--die-with-parent`` ends the sandbox with the harness.
``--cap-drop ALL``: no capabilities, also where the harness runs as root (CI), whose workers
otherwise kept them all and could remount ``/`` read-write or unmount what hides the data.
``/proc/sys`` read-only: bwrap's fresh ``/proc`` leaves it writable, and a worker of a
harness run as root could set ``kernel.core_pattern`` to a command, crash a process, and
have the kernel run that command as root outside every namespace; other settings (the
sandbox's hostname, its IPC and network limits) would carry numbers from call to call.
``--as-pid-1``: the zygote is the namespace's init, with no bwrap reaper beside it. That
reaper ran as the workers' user and could be traced: a worker could write its data into the
reaper's memory through ``/proc/1/mem`` for the next worker to read, or read the harness's
output through ``/proc/1/fd/2``. The zygote is not dumpable, so neither works on it.

Whether ``bwrap`` works is found by trying it once per process (it can be installed but not
permitted, e.g. without user namespaces in a container).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

OPTIONS = (
    "--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc",
    "--ro-bind", "/proc/sys", "/proc/sys",
    "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
    "--tmpfs", "/tmp", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
    "--new-session", "--die-with-parent", "--cap-drop", "ALL", "--as-pid-1",
)
# The zygote's (PID 1's) statistics, readable though it is not dumpable: each call's worker
# could set counters there for the next (page faults and CPU time the zygote inherits when
# it reaps a worker, memory and time its wipe spends on what a worker left): hidden, with
# clear_refs, which a worker of a root harness could write.
ZYGOTE_COUNTERS = ("stat", "status", "statm", "sched", "schedstat", "oom_score", "clear_refs")
# The machine's page tables by physical page (readable by a root harness's workers): which
# pages are cached and referenced, set by one worker and read by the next: hidden.
PAGE_FILES = ("/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup")
DEBIAN_DATASETS = Path("/usr/share/datasets")
PRIVATE_TEMP = Path("/tmp")


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[bool, str]:
    """(usable, why): tried once per process with the options the workers get."""
    if not sys.platform.startswith("linux"):
        return False, f"no sandbox on {sys.platform}: bubblewrap needs Linux namespaces"
    executable = shutil.which("bwrap")
    if executable is None:
        return False, ("bubblewrap is not installed (Debian/Ubuntu: apt-get install "
                       "bubblewrap), so workers run unsandboxed")
    try:
        done = subprocess.run([*bwrap_command(()), sys.executable, "-c", "pass"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"bubblewrap could not be started ({error}), so workers run unsandboxed"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return False, f"bubblewrap is not permitted here ({last}), so workers run unsandboxed"
    return True, ("bubblewrap: no network, read-only filesystem, private /tmp, "
                  "dataset files hidden")


def dataset_sources(data_roots: Iterable[str | os.PathLike | None]) -> list[Path]:
    """Every existing place a dataset could be read from: data roots, Debian's folder, and
    the folder of the installed mnist5k file."""
    from clbench.data.info import mnist5k_file, resolve_root

    places = {resolve_root(root).resolve() for root in data_roots}
    places.add(DEBIAN_DATASETS)
    places.add(Path(str(mnist5k_file())).resolve().parent)
    return sorted(place for place in places if place.exists())


def bwrap_command(hidden: Iterable[Path], visible: Iterable[str] = (),
                  outputs: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The ``bwrap`` prefix of the zygote's command line, hiding ``hidden`` and the files in
    ``outputs`` (see :func:`hide_outputs`); the folders and files in ``visible`` and the
    interpreter's own that the private /tmp would cover (an agent file and its folder,
    import paths, a virtualenv) are bound back read-only. /tmp itself never is (a script run
    from /tmp puts it on the import path): the workers' /tmp stays private and writable, and
    an agent file directly in it is bound alone."""
    command = [shutil.which("bwrap") or "bwrap", *OPTIONS]
    for name in ZYGOTE_COUNTERS:  # those this kernel has
        if os.path.exists(f"/proc/self/{name}"):
            command += [option for folder in ("/proc/1", "/proc/1/task/1")
                        for option in ("--ro-bind", "/dev/null", f"{folder}/{name}")]
    for path in PAGE_FILES:
        if os.path.exists(path):
            command += ["--ro-bind", "/dev/null", path]
    # the interpreter, its environment and this checkout stay visible too (all may lie
    # under /tmp: a virtualenv, an editable install whose finder points at the checkout)
    interpreter = [sys.prefix, sys.base_prefix, str(Path(sys.executable).parent),
                   str(Path(__file__).resolve().parents[2])]
    bound = []
    for path in sorted({Path(p).resolve() for p in [*visible, *interpreter]}):
        if path != PRIVATE_TEMP and path.is_relative_to(PRIVATE_TEMP) and path.exists():
            command += ["--ro-bind", str(path), str(path)]
            bound.append(path)
    command += hide_outputs(outputs, bound)
    for log in harness_logs():  # appended in place, so hiding the file itself lasts
        command += ["--ro-bind", "/dev/null", log]
    for place in hidden:  # after the outputs' folders: a dataset inside one stays hidden
        if place.is_dir():
            command += ["--tmpfs", str(place), "--remount-ro", str(place)]
        else:
            command += ["--ro-bind", "/dev/null", str(place)]
    return [*command, "--"]


def harness_logs() -> list[str]:
    """This process's stdout and stderr where they are files (a log the command is
    redirected to): workers print through the harness, which writes there, so a worker
    could find the file and read what earlier workers printed."""
    found = set()
    for descriptor in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                path = os.readlink(f"/proc/self/fd/{descriptor}")
                if os.path.isfile(path):  # not a deleted file (pytest's capture)
                    found.add(path)
        except OSError:
            pass
    return sorted(found)


def hide_outputs(outputs: Iterable[str | os.PathLike], bound: Iterable[Path] = ()
                 ) -> list[str]:
    """``bwrap`` options that keep the files the harness writes during a run (its result
    file and the checkpoint folder beside it) out of the sandbox: from there an agent could
    read its own test accuracy on the tasks so far. Each such file's folder becomes an empty
    read-only tmpfs into which everything else it held at the start is bound back read-only
    (the run's lock file, :func:`clbench.checkpoint.lock_for`, stays out too). Hiding the
    file alone would not do: it is written anew after every task (a new file renamed over
    the old), which the sandbox would then see. A folder in the private /tmp is left alone
    unless it lies in a folder bound into the sandbox. The folder is made here where it does
    not exist yet (the harness would make it anyway); where it cannot be, its nearest
    existing parent is treated so. A result file directly in the root folder is refused:
    ``/`` cannot be hidden."""
    from clbench.checkpoint import folder_for, lock_for

    names: dict[Path, set[str]] = {}
    for output in outputs:
        path = Path(output).absolute()
        folder = path.parent
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        if folder == folder.parent:
            raise ValueError(f"out={output}: a sealed run cannot hide a result file in "
                             f"{folder} from its workers; write it to a folder of its own")
        names.setdefault(folder.resolve(), set()).update(
            {path.name, folder_for(path).name, lock_for(path).name})
    options = []
    for folder, kept_out in sorted(names.items()):
        private = folder.is_relative_to(PRIVATE_TEMP) and not any(
            folder.is_relative_to(place) for place in bound)
        if private:
            continue
        options += ["--tmpfs", str(folder)]
        for entry in sorted(folder.iterdir()):
            if entry.name in kept_out:
                continue
            if entry.is_symlink():
                options += ["--symlink", os.readlink(entry), str(entry)]
            else:
                options += ["--ro-bind-try", str(entry), str(entry)]
        options += ["--remount-ro", str(folder)]
    return options
