"""Readers for the datasets that live on disk: torchvision's four sources and Debian's copy.

Each reader returns ``(images uint8 (N, C, H, W), labels int64 (N,))`` or raises
:class:`DatasetNotFoundError` (files absent, nothing downloadable) or
:class:`DatasetIntegrityError` (a file is not the published one). Files are read by
torchvision's own dataset classes, in torchvision's layout; before that, every file they will
read is MD5-checked here (see :func:`verify_files`), MNIST's unpacked IDX files included,
which torchvision itself reads unchecked. Legacy pickled MNIST caches are refused, never
loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NETWORK_PROBE_SECONDS = 3.0


# MD5 of each unpacked IDX file that torchvision reads from ``<root>/<Class>/raw``.
# torchvision lists only the MD5s of the .gz archives (``MNIST.resources``), checks them when it
# downloads, and then reads the unpacked files unchecked; these are the published MD5s of the
# unpacked files (the same 16-digit values appear, with the files' sizes 47,040,016 / 60,008 /
# 7,840,016 / 10,008 bytes for MNIST, in several independent public dataset loaders, e.g.
# OpenMMLab's FashionMNIST ``raw_data``). The Fashion-MNIST values were also verified here
# against Debian's dataset-fashion-mnist 0.0~git20200523 files: Debian recompressed the
# archives (so their .gz MD5s differ from torchvision's list), but the unpacked bytes match.
IDX_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""


class DatasetIntegrityError(ValueError):
    """A dataset file is not the published one (wrong checksum, a folder, a legacy pickle);
    the message names the file, what was expected and found, and the remedy."""


def file_md5(path: Path) -> str:
    """The MD5 hex digest of the file at ``path``, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def expected_md5s(name: str) -> dict[str, str]:
    """``{file name: MD5}`` of every file the reader of dataset ``name`` opens.

    MNIST and Fashion-MNIST: :data:`IDX_MD5`. CIFAR: torchvision's own table, read at call
    time (its ``train_list``, ``test_list`` and ``meta``, the meta file included).
    """
    if name in IDX_MD5:
        return dict(IDX_MD5[name])
    datasets = _datasets()
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    return {**dict(cls.train_list), **dict(cls.test_list), cls.meta["filename"]: cls.meta["md5"]}


def check_md5(path: Path, expected: str, dataset: str, remedy: str) -> None:
    """Raise :class:`DatasetIntegrityError` unless the file at ``path`` has MD5 ``expected``."""
    if path.is_dir():
        raise DatasetIntegrityError(f"{dataset} file {path} is a directory; {remedy}")
    found = file_md5(path)
    if found != expected:
        raise DatasetIntegrityError(
            f"{dataset} file {path} fails its checksum: expected MD5 {expected}, found {found}; "
            f"{remedy}")


def verify_files(name: str, folder: Path) -> list[str]:
    """Check every present file of dataset ``name`` in ``folder``; return the missing ones."""
    missing = []
    for filename, md5 in expected_md5s(name).items():
        path = folder / filename
        if not path.exists():
            missing.append(filename)
            continue
        check_md5(path, md5, name,
                  "delete it and place the published file there (or, where the network reaches "
                  "the mirror, delete it and let clbench download it again)")
    return missing


def _refuse_legacy_mnist(folder: Path, name: str) -> None:
    """torchvision's MNIST loads ``processed/*.pt`` before the raw files when both exist;
    clbench never unpickles a dataset, so any such file is refused instead."""
    legacy = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    if legacy:
        raise DatasetIntegrityError(
            f"{name}: refusing the legacy pickled file {legacy[0]} (clbench reads only the "
            f"checksummed raw IDX files); delete the folder {folder} and rerun")


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


def _open_torchvision(cls, name: str, root: Path, folder: Path, train: bool, download: bool,
                      urls: list[str]):
    """Open a torchvision dataset whose files in ``folder`` all pass :func:`verify_files`;
    download the missing ones only if a mirror answers at once (and check them again)."""
    missing = verify_files(name, folder)
    if missing:
        if not (download and any(_host_reachable(url) for url in urls)):
            raise DatasetNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}")
        cls(str(root), train=train, download=True)
        if missing := verify_files(name, folder):
            raise DatasetNotFoundError(f"{name}: the download left {', '.join(missing)} missing")
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError as error:
        raise DatasetNotFoundError(str(error)) from None


def read_mnist_family(name: str, root: Path, train: bool, download: bool):
    """MNIST or FashionMNIST through torchvision (IDX files under ``root/<Class>/raw``)."""
    datasets = _datasets()
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    _refuse_legacy_mnist(root / cls.__name__ / "processed", name)
    if name == "fashion_mnist":
        _copy_debian_fashion_mnist(root)
    dataset = _open_torchvision(cls, name, root, root / cls.__name__ / "raw", train, download,
                                cls.mirrors)
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.to(torch.int64)


def read_cifar(name: str, root: Path, train: bool, download: bool):
    """CIFAR-10 or CIFAR-100 through torchvision (python batches, md5-checked)."""
    datasets = _datasets()
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    dataset = _open_torchvision(cls, name, root, root / cls.base_folder, train, download,
                                [cls.url])
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _copy_debian_fashion_mnist(root: Path, debian: Path | None = None) -> None:
    """Unpack Debian's Fashion-MNIST IDX files into torchvision's layout under ``root``.

    Debian's ``dataset-fashion-mnist`` ships the four files (gzipped or not) in one folder;
    torchvision reads uncompressed IDX files from ``root/FashionMNIST/raw``. Each copy is
    written to a ``.partial`` file and MD5-checked before it is renamed into place, so a
    corrupt source or an interrupted copy never leaves a file that looks complete.
    """
    source = DEBIAN_FASHION_MNIST if debian is None else debian
    raw = root / "FashionMNIST" / "raw"
    for filename, md5 in IDX_MD5["fashion_mnist"].items():
        target = raw / filename
        if target.exists():
            continue
        plain, zipped = source / filename, source / (filename + ".gz")
        if not (plain.exists() or zipped.exists()):
            return
        raw.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        try:
            if zipped.exists():
                with gzip.open(zipped, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(plain, partial)
            check_md5(partial, md5, "fashion_mnist",
                      f"copied from {zipped if zipped.exists() else plain}, which is not the "
                      "published file: reinstall Debian's dataset-fashion-mnist or place the "
                      f"published files in {raw}")
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            partial.unlink(missing_ok=True)
            raise DatasetIntegrityError(
                f"fashion_mnist: cannot unpack {zipped if zipped.exists() else plain} "
                f"({error}); reinstall Debian's dataset-fashion-mnist or place the published "
                f"files in {raw}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
