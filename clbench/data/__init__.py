"""Image datasets as uint8 tensors, loaded once per process.

Every source yields the same thing: an :class:`ImageData` holding ``images`` (uint8,
``(N, C, H, W)``) and ``labels`` (int64, ``(N,)``) on the requested device. Normalisation
is not baked in: :func:`normalize` turns a uint8 batch into float32 on the fly, so a whole
dataset costs one byte per pixel on the device.
"""

from clbench.data.registry import (
    DATASETS,
    DatasetNotFoundError,
    ImageData,
    dataset_info,
    load_dataset,
    normalize,
    resolve_root,
)
from clbench.data.sources import DatasetIntegrityError

__all__ = [
    "DATASETS",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "ImageData",
    "dataset_info",
    "load_dataset",
    "normalize",
    "resolve_root",
]
