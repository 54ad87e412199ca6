"""Readers for the datasets that live on disk: torchvision's four sources and Debian's copy.

Each reader returns ``(images uint8 (N, C, H, W), labels int64 (N,))`` or raises
:class:`DatasetNotFoundError`. Files are read by torchvision's own dataset classes, so their
layout and checksums are exactly torchvision's (CIFAR batches are md5-checked on every load).
"""

from __future__ import annotations

import gzip
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NETWORK_PROBE_SECONDS = 3.0


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""


def _host_reachable(url: str, timeout: float | None = None) -> bool:
    """True if a TCP connection to the URL's host opens within ``timeout`` seconds.

    ``timeout`` defaults to :data:`NETWORK_PROBE_SECONDS`, read at call time. Name
    resolution can block far longer than a socket timeout, so the probe runs in a daemon
    thread that is abandoned when it is late: a missing network costs seconds, not minutes,
    and a late probe does not keep the process alive at exit either.
    """
    timeout = NETWORK_PROBE_SECONDS if timeout is None else timeout
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    connected = threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                connected.set()
        except (OSError, ValueError):  # no route, no name, refused, or a malformed host
            pass

    probe = threading.Thread(target=connect, name="clbench-network-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return connected.is_set()


def _datasets():
    """``torchvision.datasets``, imported on first use: importing torchvision takes about a
    second (it loads its models and ops too), which the built-in offline data never needs."""
    from torchvision import datasets

    return datasets


def _open_torchvision(cls, root: Path, train: bool, download: bool, urls: list[str]):
    """Open a torchvision dataset; download only if a mirror answers at once."""
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError as missing:
        if download and any(_host_reachable(url) for url in urls):
            return cls(str(root), train=train, download=True)
        raise DatasetNotFoundError(str(missing)) from None


def read_mnist_family(name: str, root: Path, train: bool, download: bool):
    """MNIST or FashionMNIST through torchvision (IDX files under ``root/<Class>/raw``)."""
    datasets = _datasets()
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    if name == "fashion_mnist":
        _copy_debian_fashion_mnist(root)
    dataset = _open_torchvision(cls, root, train, download, cls.mirrors)
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.to(torch.int64)


def read_cifar(name: str, root: Path, train: bool, download: bool):
    """CIFAR-10 or CIFAR-100 through torchvision (python batches, md5-checked)."""
    datasets = _datasets()
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    dataset = _open_torchvision(cls, root, train, download, [cls.url])
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _copy_debian_fashion_mnist(root: Path, debian: Path | None = None) -> None:
    """Unpack Debian's Fashion-MNIST IDX files into torchvision's layout under ``root``.

    Debian's ``dataset-fashion-mnist`` ships the four files (gzipped or not) in one folder;
    torchvision reads uncompressed IDX files from ``root/FashionMNIST/raw``.
    """
    source = DEBIAN_FASHION_MNIST if debian is None else debian
    raw = root / "FashionMNIST" / "raw"
    for filename, _ in _datasets().FashionMNIST.resources:
        target = raw / filename.removesuffix(".gz")
        if target.exists():
            continue
        plain, zipped = source / target.name, source / (target.name + ".gz")
        if not (plain.exists() or zipped.exists()):
            return
        raw.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        if zipped.exists():
            with gzip.open(zipped, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(plain, partial)
        partial.replace(target)
