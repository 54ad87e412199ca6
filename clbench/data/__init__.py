"""Image datasets as uint8 tensors, loaded once per process.

Every source yields the same thing: an :class:`ImageData` holding ``images`` (uint8,
``(N, C, H, W)``) and ``labels`` (int64, ``(N,)``) on the requested device. Normalisation
is not baked in: :func:`normalize` turns a uint8 batch into float32 on the fly, so a whole
dataset costs one byte per pixel on the device.

The facts about datasets (:mod:`clbench.data.info`) are imported at once; what loads data
(and torch with it) is imported on first use, so that ``import clbench`` stays light.
"""

from importlib import import_module

from clbench.data.info import DATASETS, DatasetInfo, dataset_info, resolve_root

_LAZY = {
    "DatasetNotFoundError": "clbench.data.sources",
    "DatasetIntegrityError": "clbench.data.sources",
    "ImageData": "clbench.data.registry",
    "load_dataset": "clbench.data.registry",
    "normalize": "clbench.data.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "ImageData",
    "dataset_info",
    "load_dataset",
    "normalize",
    "resolve_root",
]
