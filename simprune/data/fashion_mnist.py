"""Fashion-MNIST from the standard IDX files.

Looks in the data folder for ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``; when the folder has none of
them, falls back to Debian's package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``). A malformed file raises ``ValueError`` naming it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .base import ArrayDataset, DataNotFoundError

__all__ = ["FASHION_MNIST_CLASSES", "DEBIAN_FASHION_MNIST_DIR", "read_idx", "load_fashion_mnist"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped) into a uint8 array.

    Header: two zero bytes, type code ``0x08`` (uint8), the number of dimensions, then each
    dimension as a big-endian int32.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX type code {raw[2]:#04x} unsupported; only 0x08 (uint8)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header says {dims} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(root: Path, split: str = "train", cache_dir: Path | None = None) -> ArrayDataset:
    """Fashion-MNIST ``split`` (``train``: 60,000, ``test``: 10,000) as uint8 ``[N, 1, 28, 28]``."""
    del cache_dir  # IDX files load in well under a second
    if split not in _PREFIX:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_PREFIX)}")
    stems = (f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte")
    searched = []
    for folder in (Path(root), DEBIAN_FASHION_MNIST_DIR):
        searched.append(str(folder))
        paths = [_find(folder, s) for s in stems]
        if all(p is not None for p in paths):
            break
        if any(p is not None for p in paths):
            raise DataNotFoundError(f"{folder}: found only one of {stems[0]}[.gz] and {stems[1]}[.gz]")
    else:
        raise DataNotFoundError(
            f"Fashion-MNIST {split} files {stems[0]}[.gz] and {stems[1]}[.gz] not found in "
            f"{' or '.join(searched)} (pass --data DIR or set SIMPRUNE_DATA=DIR, or install the "
            "Debian package dataset-fashion-mnist)"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{paths[0]} / {paths[1]}: images {images.shape} and labels {labels.shape} "
            "must be [N, H, W] and [N]"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{paths[1]}: label {labels.max()} out of range 0..9")
    return ArrayDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES,
    )
