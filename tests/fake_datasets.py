"""Tiny datasets written in the real on-disk formats that torchvision reads.

The full datasets are never downloaded by the tests. Instead, small files are generated in
MNIST's IDX format and CIFAR's pickled-batch format, so the code that reads real files
reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from clbench.data import sources

MNIST_IMAGE_MAGIC = 2051
MNIST_LABEL_MAGIC = 2049
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _class_balanced_labels(n_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(n_classes), per_class))


def write_mnist_idx(
    folder: Path, train_per_class: int, test_per_class: int, seed: int = 0, gz: bool = False
) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """Write the four MNIST IDX files (big-endian headers, uint8 payload) into ``folder``.

    Returns ``{train: (images (N, 28, 28) uint8, labels (N,) uint8)}`` for both splits.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for train, per_class in ((True, train_per_class), (False, test_per_class)):
        labels = _class_balanced_labels(10, per_class, rng).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        image_file, label_file = MNIST_FILES[train]
        image_bytes = struct.pack(">IIII", MNIST_IMAGE_MAGIC, len(images), 28, 28)
        label_bytes = struct.pack(">II", MNIST_LABEL_MAGIC, len(labels))
        for name, payload in (
            (image_file, image_bytes + images.tobytes()),
            (label_file, label_bytes + labels.tobytes()),
        ):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        written[train] = (images, labels)
    return written


def _pickle_batch(path: Path, content: dict) -> str:
    # The originals are Python 2 pickles: torchvision's pickle.load(..., encoding="latin1")
    # turns their keys into str, which is what protocol 2 with str keys gives as well.
    path.write_bytes(pickle.dumps(content, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_class_per_batch: int = 2, test_per_class: int = 6, seed: int = 0):
    """Write ``cifar-10-batches-py`` (5 train batches, test batch, batches.meta) under ``root``.

    Returns (train rows (N, 3072), train labels, test rows, test labels, md5 by file name).
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    md5, train_rows, train_labels = {}, [], []
    for i in range(1, 6):
        labels = _class_balanced_labels(10, per_class_per_batch, rng)
        rows = _cifar_images(len(labels), rng)
        name = f"data_batch_{i}"
        md5[name] = _pickle_batch(
            folder / name, {"batch_label": name, "labels": labels.tolist(), "data": rows}
        )
        train_rows.append(rows)
        train_labels.append(labels)
    test_labels = _class_balanced_labels(10, test_per_class, rng)
    test_rows = _cifar_images(len(test_labels), rng)
    md5["test_batch"] = _pickle_batch(
        folder / "test_batch", {"labels": test_labels.tolist(), "data": test_rows}
    )
    md5["batches.meta"] = _pickle_batch(
        folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]}
    )
    return np.concatenate(train_rows), np.concatenate(train_labels), test_rows, test_labels, md5


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0):
    """Write ``cifar-100-python`` (train, test, meta with fine labels) under ``root``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    md5, splits = {}, {}
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = _class_balanced_labels(100, per_class, rng)
        rows = _cifar_images(len(fine), rng)
        md5[name] = _pickle_batch(
            folder / name, {"fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                            "data": rows}
        )
        splits[name] = (rows, fine)
    md5["meta"] = _pickle_batch(
        folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)],
                          "coarse_label_names": [f"coarse{c}" for c in range(20)]}
    )
    return splits, md5


def idx_md5(folder: Path) -> dict[str, str]:
    """MD5 of the unpacked content of each IDX file (plain or .gz) written in ``folder``."""
    md5 = {}
    for name in (*MNIST_FILES[True], *MNIST_FILES[False]):
        plain, zipped = folder / name, folder / f"{name}.gz"
        payload = plain.read_bytes() if plain.exists() else gzip.decompress(zipped.read_bytes())
        md5[name] = hashlib.md5(payload).hexdigest()
    return md5


def trust_idx_files(monkeypatch: pytest.MonkeyPatch, dataset: str, folder: Path) -> None:
    """Make clbench accept the generated IDX files in ``folder`` as ``dataset`` for one test,
    by patching its table of MD5s; the real checksums are restored by ``monkeypatch``."""
    monkeypatch.setitem(sources.IDX_MD5, dataset, idx_md5(folder))


def trust_checksums(monkeypatch: pytest.MonkeyPatch, cls, md5: dict[str, str]) -> None:
    """Make torchvision's ``cls`` accept generated files by patching its md5 class attributes.

    The real checksums in torchvision are restored by ``monkeypatch`` after the test.
    """
    monkeypatch.setattr(cls, "train_list", [[name, md5[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})
