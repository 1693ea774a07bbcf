"""Data set registry: ``load_dataset(name, root, split)``.

=================  ===============================================  ==========================
name               files in ``root``                                 items
=================  ===============================================  ==========================
``cifar10``        ``cifar-10-batches-py/``, ``cifar-10-python.tar   ``ArrayDataset`` uint8
                   .gz`` or ``cifar10-jpg.tar.gz`` (decoded once,    ``[N, 3, 32, 32]``
                   cached)
``cifar100``       ``cifar-100-python/`` or ``cifar-100-python.tar   ``ArrayDataset`` uint8
                   .gz`` (fine labels)                               ``[N, 3, 32, 32]``
``fashion_mnist``  IDX files (``train-images-idx3-ubyte.gz`` ...),   ``ArrayDataset`` uint8
                   else ``/usr/share/datasets/fashion-mnist/``       ``[N, 1, 28, 28]``
``imagefolder``    ``<split>/<class>/<image>`` (classes of           ``ImageFolderDataset``
                   ``train/``; decoded at ``load_size``, cached      uint8 ``[3, S, S]``
                   when small)
=================  ===============================================  ==========================

The data folder comes from ``--data`` or ``$SIMPRUNE_DATA`` (:func:`resolve_data_root`); caches
go to ``cache_dir``, default ``$SIMPRUNE_CACHE`` or ``~/.cache/simprune``. How each loader
treats corrupt files is written in its module (:mod:`.cifar`, :mod:`.fashion_mnist`,
:mod:`.folder`): errors always name the file or archive member; nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..registry import Registry
from .base import ArrayDataset, DataNotFoundError, default_cache_dir, resolve_data_root
from .cifar import load_cifar10, load_cifar100
from .fashion_mnist import load_fashion_mnist
from .folder import ImageFolderDataset, load_imagefolder
from .shards import load_shards
from .stats import dataset_stats

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "load_dataset",
    "dataset_key",
    "dataset_names",
    "dataset_stats",
    "resolve_data_root",
    "default_cache_dir",
    "ArrayDataset",
    "ImageFolderDataset",
    "DataNotFoundError",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A loader and its splits (``None``: any sub-folder of the root is a split)."""

    loader: Callable[..., Dataset]
    splits: tuple[str, ...] | None
    n_classes: int | None
    description: str


DATASETS: Registry[DatasetSpec] = Registry("data set")
DATASETS.register("cifar10")(DatasetSpec(load_cifar10, ("train", "test"), 10, "CIFAR-10, 32x32 RGB, 50k/10k"))
DATASETS.register("cifar100")(
    DatasetSpec(load_cifar100, ("train", "test"), 100, "CIFAR-100 (fine labels), 32x32 RGB")
)
DATASETS.register("fashion_mnist")(
    DatasetSpec(load_fashion_mnist, ("train", "test"), 10, "Fashion-MNIST, 28x28 grey, 60k/10k")
)
def load_folder_or_shards(root: Path, split: str = "train", cache_dir: Path | None = None,
                          load_size: int = 256, **options: Any) -> Any:
    """An image folder's split (:func:`~simprune.data.folder.load_imagefolder`), or the split of a
    folder of tar shards when ``root`` holds ``shards.json`` (:mod:`simprune.data.shards`: read by
    worker processes, never cached, so the folder's cache options do not apply)."""
    if (Path(root) / "shards.json").is_file():  # a folder of tar shards (simprune data shard)
        return load_shards(root, split, load_size)
    return load_imagefolder(root, split, cache_dir, load_size, **options)


DATASETS.register("imagefolder")(
    DatasetSpec(load_folder_or_shards, None, None, "root/<split>/<class>/<image>, resized, cached when small")
)

#: options of the ``imagefolder`` loader (:func:`simprune.data.folder.load_imagefolder`)
FOLDER_OPTIONS = ("load_size", "cache_mb", "progress", "workers")

_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "image_folder": "imagefolder",
}


def dataset_key(name: str) -> str:
    """The registered name of ``name`` (aliases such as ``cifar-10``, ``image_folder`` resolved)."""
    return _ALIASES.get(name.lower(), name.lower())


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return DATASETS.names()


def load_dataset(
    name: str,
    root: Path | str | os.PathLike[str],
    split: str = "train",
    cache_dir: Path | str | None = None,
    **options: object,
) -> Dataset:
    """Load data set ``name``'s ``split`` from the data folder ``root``.

    Args:
        name: one of :func:`dataset_names` (``cifar10``, ``cifar100``, ``fashion_mnist``,
            ``imagefolder``).
        root: data folder (see :func:`resolve_data_root`).
        split: ``train`` or ``test`` (``imagefolder``: any sub-folder of ``root``).
        cache_dir: where decoded arrays are cached (the ``cifar10`` JPEG archive, and
            ``imagefolder`` splits that fit ``cache_mb``); default ``$SIMPRUNE_CACHE`` or
            ``~/.cache/simprune``.
        options: ``imagefolder`` only: ``load_size`` (decode size, default 256), ``cache_mb``
            (cache limit, default ``$SIMPRUNE_CACHE_MB`` or 2048; 0: off), ``progress`` (a bar
            while the cache is built), ``workers`` (decoding threads when not cached).

    Returns:
        An :class:`ArrayDataset` (uint8 ``[N, C, H, W]`` in memory) or, for ``imagefolder``, an
        :class:`ImageFolderDataset`; both index as ``(uint8 [C, H, W], label)``.

    Raises:
        KeyError: unknown name (lists the known ones).
        ValueError: unknown split (lists the valid ones) or unknown option.
        DataNotFoundError: the files are not in ``root``.
    """
    key = dataset_key(name)
    spec = DATASETS.get(key)
    if spec.splits is not None and split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for {key}; valid: {', '.join(spec.splits)}")
    if options and key != "imagefolder":
        raise ValueError(f"{key} takes no options, got {sorted(options)}")
    unknown = set(options) - set(FOLDER_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {key}; valid: {', '.join(FOLDER_OPTIONS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return spec.loader(Path(root), split, cache, **options)
