"""Shared fixtures: an empty dataset cache, a dead network, trusted fake CIFAR and IDX checksums,
a data root of small generated MNIST and CIFAR-10 files, a process holding a result file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from fake_datasets import trust_checksums, trust_idx_files, write_cifar10, write_mnist_idx
from tiny_runs import shadowing_folder
from torchvision import datasets

from clbench.data import registry, sources

# Under pytest-xdist (``make test`` runs ``pytest -n 2``) each test process, the sealed workers
# it starts (the harness passes on its thread count) and the commands it runs get one torch
# thread: two processes of two threads each on 2 cores made the in-process training tests
# several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def fresh_data_cache():
    """Empty clbench's per-process dataset cache before and after, so fake data cannot leak."""
    registry._load_cached.cache_clear()
    yield
    registry._load_cached.cache_clear()


@pytest.fixture
def dead_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A network on which every connection hangs, a short probe timeout, no Debian copy.

    Nothing can be downloaded; a test that waits on the network shows up as slow, not stuck.
    Returns the (absent) Debian Fashion-MNIST folder the code is pointed at.
    """
    release = threading.Event()

    def hanging_connect(*args, **kwargs):
        release.wait(30)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    monkeypatch.setattr(sources, "NETWORK_PROBE_SECONDS", 0.2)
    absent_debian = tmp_path / "no-debian-fashion-mnist"
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", absent_debian)
    yield absent_debian
    release.set()


@pytest.fixture
def cifar_checksums_for(monkeypatch: pytest.MonkeyPatch):
    """``cifar_checksums_for(cls, md5)``: trust generated CIFAR files for this test only."""
    return lambda cls, md5: trust_checksums(monkeypatch, cls, md5)


@pytest.fixture
def idx_checksums_for(monkeypatch: pytest.MonkeyPatch):
    """``idx_checksums_for(dataset, folder)``: trust generated IDX files for this test only."""
    return lambda dataset, folder: trust_idx_files(monkeypatch, dataset, Path(folder))


@pytest.fixture
def fake_full_data(tmp_path, fresh_data_cache, cifar_checksums_for, idx_checksums_for):
    """A data root holding small generated MNIST (IDX) and CIFAR-10 (pickled batches)."""
    write_mnist_idx(tmp_path / "MNIST" / "raw", train_per_class=20, test_per_class=10)
    idx_checksums_for("mnist", tmp_path / "MNIST" / "raw")
    *_, md5 = write_cifar10(tmp_path, per_class_per_batch=4, test_per_class=10)
    cifar_checksums_for(datasets.CIFAR10, md5)
    return tmp_path


@pytest.fixture
def in_shadowing_folder(tmp_path, monkeypatch) -> Path:
    """Run the test from a folder with its own ``agents/`` and ``baselines/`` packages (which
    raise when imported): the harness and its workers must import the installed ones."""
    folder = shadowing_folder(tmp_path / "cwd")
    monkeypatch.chdir(folder)
    return folder


# A process that holds a result file as a live run does (clbench.checkpoint.hold) until killed.
HOLDER = ("import sys, time\nfrom clbench.checkpoint import hold\nwith hold(sys.argv[1]):\n"
          "    print('held', flush=True)\n    time.sleep(600)\n")


@pytest.fixture
def hold_elsewhere():
    """``start(out)`` runs another process that holds ``out`` and returns it once it does;
    whatever is still running at the end of the test is killed."""
    processes: list[subprocess.Popen] = []

    def start(out: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)],
                                   stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()
        process.stdout.close()
