"""Readers for the datasets that live on disk: torchvision's four sources and Debian's copy.

Each reader returns ``(images uint8 (N, C, H, W), labels int64 (N,))`` or raises
:class:`DatasetNotFoundError`. Files are read by torchvision's own dataset classes, so their
layout and checksums are exactly torchvision's (CIFAR batches are md5-checked on every load).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torchvision import datasets

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NETWORK_PROBE_SECONDS = 3.0


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""


def _host_reachable(url: str, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """True if a TCP connection to the URL's host opens within ``timeout`` seconds.

    Name resolution can block far longer than a socket timeout, so the probe runs in a
    thread that is abandoned when it is late: a missing network costs seconds, not minutes.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)

    def connect() -> None:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


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
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    if name == "fashion_mnist":
        _copy_debian_fashion_mnist(root)
    dataset = _open_torchvision(cls, root, train, download, cls.mirrors)
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.to(torch.int64)


def read_cifar(name: str, root: Path, train: bool, download: bool):
    """CIFAR-10 or CIFAR-100 through torchvision (python batches, md5-checked)."""
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
    for filename, _ in datasets.FashionMNIST.resources:
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
