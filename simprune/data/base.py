"""Shared pieces of the data loaders: errors, the data root, the cache folder, ``ArrayDataset``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DataNotFoundError",
    "WrongArchiveError",
    "CorruptImageError",
    "DataWarning",
    "ArrayDataset",
    "resolve_data_root",
    "run_data_root",
    "warn_cache_unwritable",
    "default_cache_dir",
    "cache_limit_mb",
    "sha256_file",
    "DATA_ENV",
    "CACHE_ENV",
    "CACHE_MB_ENV",
    "DEFAULT_CACHE_MB",
]

DATA_ENV = "SIMPRUNE_DATA"
CACHE_ENV = "SIMPRUNE_CACHE"
#: the largest image folder split (decoded, in MB) that is cached; 0 turns folder caching off
CACHE_MB_ENV = "SIMPRUNE_CACHE_MB"
DEFAULT_CACHE_MB = 2048

_HOW_TO = (
    f"pass --data DIR or set {DATA_ENV}=DIR; for CIFAR-10 the folder must contain "
    "cifar10-jpg.tar.gz or cifar-10-python.tar.gz or cifar-10-batches-py/"
)


class DataNotFoundError(FileNotFoundError):
    """The data folder or the files a loader needs in it are missing."""


class WrongArchiveError(ValueError):
    """A data archive is not the expected file (its sha256 differs)."""


class CorruptImageError(ValueError):
    """An image cannot be decoded; the message names the file (or archive member) and the fix."""


class DataWarning(UserWarning):
    """Data that loads but may not be what the user meant (e.g. empty class folders)."""


def resolve_data_root(path: str | os.PathLike[str] | None) -> Path:
    """The data folder: ``path`` (the ``--data`` argument) if given, else ``$SIMPRUNE_DATA``.

    Raises:
        DataNotFoundError: neither is set, or the folder does not exist.
    """
    if path is None or str(path) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise DataNotFoundError(f"no data folder given: {_HOW_TO}")
        root, origin = Path(env), f"${DATA_ENV}"
    else:
        root, origin = Path(path), "--data"
    root = root.expanduser()
    if not root.exists():
        raise DataNotFoundError(f"data folder {str(root)!r} (from {origin}) does not exist: {_HOW_TO}")
    check_readable(root, origin)
    return root


def check_readable(root: Path, origin: str = "--data") -> None:
    """``root`` can be listed (a folder) or read (a file); else a ``PermissionError`` naming
    ``root`` itself, not a file inside it that a loader would then report missing."""
    try:
        if root.is_dir():
            with os.scandir(root) as entries:
                next(entries, None)
        else:
            with open(root, "rb"):
                pass
    except PermissionError as err:
        raise PermissionError(err.errno, f"the data folder (from {origin}) cannot be read "
                                         f"({err.strerror})", str(root)) from err


def run_data_root(given: str | None, remembered: str | None, run: str | os.PathLike[str]) -> Path:
    """The data folder of an existing run (``simprune eval``): ``given`` (``--data``) if set, else
    the folder the run trained on (``remembered``, saved with its config), else ``$SIMPRUNE_DATA``.

    When the remembered folder is gone, ``$SIMPRUNE_DATA`` is used with a :class:`DataWarning`
    saying so; without it, :class:`DataNotFoundError` names the folder and how to point elsewhere.
    """
    if given:
        return resolve_data_root(given)
    if not remembered:  # a run saved before runs remembered their folder
        return resolve_data_root(None)
    folder = Path(remembered).expanduser()
    if folder.exists():
        check_readable(folder, f"the config of {run}")
        return folder
    env = os.environ.get(DATA_ENV, "")
    if not env:
        raise DataNotFoundError(
            f"the data folder {str(folder)!r} that {run} was trained on no longer exists; pass "
            f"--data DIR or set {DATA_ENV}=DIR to point to where the data set is now")
    import warnings

    root = resolve_data_root(None)
    warnings.warn(f"the data folder {str(folder)!r} that {run} was trained on no longer exists; "
                  f"using ${DATA_ENV} ({root})", DataWarning, stacklevel=2)
    return root


#: cache folders a write already failed in (one warning each per process)
_UNWRITABLE_CACHES: set[str] = set()


def warn_cache_unwritable(path: Path, err: OSError, then: str) -> None:
    """A :class:`DataWarning` (``simprune: warning: ...`` on the command line) that the cache file
    ``path`` could not be written, once per cache folder and process: the train and test splits
    of one run fail for the same reason."""
    import warnings

    folder = str(Path(path).parent)
    if folder in _UNWRITABLE_CACHES:
        return
    _UNWRITABLE_CACHES.add(folder)
    why = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    warnings.warn(f"could not write the cache {path}: {why}{where}; {then}. Set {CACHE_ENV} to a "
                  "writable folder to keep it", DataWarning, stacklevel=3)


def default_cache_dir() -> Path:
    """``$SIMPRUNE_CACHE`` if set, else ``~/.cache/simprune``."""
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "simprune"


def cache_limit_mb(value: int | str | None = None) -> int:
    """The size limit of image folder caches in MB: ``value`` if given, else ``$SIMPRUNE_CACHE_MB``,
    else :data:`DEFAULT_CACHE_MB`. 0 turns the cache off.

    Raises:
        ValueError: not a whole number >= 0 (names the value and where it came from).
    """
    origin = "cache_mb"
    if value is None:
        value = os.environ.get(CACHE_MB_ENV, "")
        origin = f"${CACHE_MB_ENV}"
        if value == "":
            return DEFAULT_CACHE_MB
    try:
        mb = int(value)
    except (TypeError, ValueError):
        mb = -1
    if isinstance(value, bool) or mb < 0:
        raise ValueError(f"{origin} must be a whole number of MB >= 0 (0: no image folder cache), "
                         f"got {value!r}")
    return mb


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ArrayDataset(Dataset):
    """An in-memory labelled image set.

    Attributes:
        images: uint8 ``[N, C, H, W]`` on the CPU.
        labels: int64 ``[N]`` in ``0 .. len(classes) - 1``.
        classes: class names; ``classes[k]`` is the name of label ``k``.

    Some sources are stored sorted by class (the CIFAR-10 JPEG archive is): draw subsets at
    random (``ds.subset(torch.randperm(len(ds))[:n])``), never take the first ``n`` items.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N={images.shape[0]}, got shape {tuple(labels.shape)}")
        self.images = images.cpu()
        self.labels = labels.to(device="cpu", dtype=torch.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(uint8 [C, H, W], label)``."""
        return self.images[index], int(self.labels[index])

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Gather a batch: ``idx`` int64 ``[B]`` -> ``(uint8 [B, C, H, W], int64 [B])``."""
        idx = torch.as_tensor(idx, dtype=torch.int64, device="cpu")
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def subset(self, idx: Tensor) -> ArrayDataset:
        """A new ``ArrayDataset`` with the items ``idx`` (int64 ``[M]``), same classes."""
        images, labels = self.get_batch(idx)
        return ArrayDataset(images, labels, self.classes)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return f"ArrayDataset(n={len(self)}, shape=[{c}, {h}, {w}], classes={len(self.classes)})"
