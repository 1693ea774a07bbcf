"""CIFAR-10 and CIFAR-100 loaders.

Sources, looked for in this order in the data folder (the official release first: it is lossless
and needs no decoding):

1. ``cifar-10-batches-py/`` (extracted) or ``cifar-10-python.tar.gz`` (read in place): the
   official pickled batches ``data_batch_1..5`` and ``test_batch``. CIFAR-100: ``cifar-100-python/``
   or ``cifar-100-python.tar.gz`` (``train``, ``test``, ``meta``; fine labels).
2. ``cifar10-jpg.tar.gz``, the JPEG archive of ``shared/data`` (``train/<class>/NNNN.jpg``,
   ``test/<class>/NNNN.jpg``). Its sha256 is checked against the known one
   (:data:`CIFAR10_JPG_SHA256`); a different file raises :class:`WrongArchiveError` naming the
   file and both hashes. The JPEGs are decoded once with PIL straight from the compressed tar
   stream (nothing is extracted to disk) and the arrays are cached as
   ``<cache_dir>/cifar10-jpg-<sha256[:16]>.npz`` (written atomically: temporary file +
   ``os.replace``). The cache stores the archive's hash and is rebuilt when the hash or the arrays
   do not match, so a reload is both fast and validated.

Corrupt data: an archive member that PIL cannot decode, or that is not a 32x32 image, raises
:class:`CorruptImageError` naming the archive and the member; nothing is silently skipped (a
missing image would shift every count). A pickled batch without the expected keys raises
``ValueError`` naming the file.

Order: the JPEG archive is sorted by class (all airplanes first). Sample subsets at random.
Classes are sorted alphabetically (airplane .. truck), which is also the official label order.

The pickled batches are read with ``pickle``: only load files from a source you trust.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

from simprune.atomic import atomic_write

from .base import (
    ArrayDataset,
    CorruptImageError,
    DataNotFoundError,
    WrongArchiveError,
    default_cache_dir,
    sha256_file,
    warn_cache_unwritable,
)

__all__ = [
    "CIFAR10_JPG_NAME",
    "CIFAR10_JPG_SHA256",
    "CIFAR10_CLASSES",
    "load_cifar10",
    "load_cifar100",
    "decode_jpeg_archive",
    "load_jpeg_archive_cached",
]

log = logging.getLogger(__name__)

CIFAR10_JPG_NAME = "cifar10-jpg.tar.gz"
CIFAR10_JPG_SHA256 = "b8064bfae058ced272f37ae0d7bb675ed74e5b6071c06dfd0e4e8ff12d1cf1de"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_SPLITS = ("train", "test")
_FIX = ("The archive is damaged or not CIFAR-10's JPEG archive: copy cifar10-jpg.tar.gz again from "
        "shared/data (sha256 in its README)")
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- JPEG archive


def decode_jpeg_archive(
    path: str | os.PathLike[str], size: int = 32
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Decode every ``<split>/<class>/<name>.jpg`` of a ``.tar.gz`` without extracting it.

    Returns:
        ``{split: (images uint8 [N, 3, size, size], labels int64 [N], classes)}``; classes sorted
        alphabetically, items ordered by (class, file name).

    Raises:
        CorruptImageError: a member cannot be decoded or is not ``size x size`` (names it).
        ValueError: the archive is damaged, holds no images, or its splits have different
            classes.
    """
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    try:
        with tarfile.open(path, mode="r|gz") as tar:  # streaming: one pass over the gzip stream
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 3:
                    continue
                split, cls, name = parts[-3], parts[-2], parts[-1]
                if not name.lower().endswith((".jpg", ".jpeg")):
                    continue
                data = tar.extractfile(member)
                assert data is not None  # a regular file
                arr = _decode(data.read(), path, member.name, size)
                found.setdefault(split, []).append((cls, name, arr))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: damaged or not a .tar.gz archive: {e}") from e
    if not found:
        raise ValueError(f"{path}: no <split>/<class>/*.jpg images found in the archive")
    out: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    all_classes: list[str] | None = None
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))
        classes = sorted({c for c, _, _ in items})
        if all_classes is not None and classes != all_classes:
            raise ValueError(f"{path}: splits have different classes: {all_classes} vs {classes}")
        all_classes = classes
        index = {c: i for i, c in enumerate(classes)}
        images = np.stack([a for _, _, a in items])
        labels = np.array([index[c] for c, _, _ in items], dtype=np.int64)
        out[split] = (images, labels, classes)
    return out


def _decode(data: bytes, archive: str | os.PathLike[str], member: str, size: int) -> np.ndarray:
    """One JPEG -> uint8 ``[3, size, size]``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise CorruptImageError(f"{archive}: member {member!r} is not a decodable image: {e}. {_FIX}") from e
    if arr.shape != (size, size, 3):
        raise CorruptImageError(
            f"{archive}: member {member!r} is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}. "
            f"{_FIX}"
        )
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _cache_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"cifar10-jpg-{digest[:16]}.npz"


def _read_cache(path: Path, digest: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Arrays of ``split`` from a cache file; ``ValueError`` when it is stale or malformed."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["source_sha256"]) != digest or int(z["version"]) != _CACHE_VERSION:
            raise ValueError(f"cache {path} was built from another archive or version")
        images, labels = z[f"{split}_images"], z[f"{split}_labels"]
        classes = [str(c) for c in z["classes"]]
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"cache {path} holds malformed arrays")
    return images, labels, classes


def _write_cache(path: Path, digest: str, decoded: dict) -> None:
    """Write atomically (:func:`simprune.atomic.atomic_write`)."""
    arrays: dict[str, np.ndarray] = {
        "source_sha256": np.array(digest),
        "version": np.array(_CACHE_VERSION),
        "classes": np.array(next(iter(decoded.values()))[2]),
    }
    for split, (images, labels, _) in decoded.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    # uncompressed: reloads in a fraction of a second
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_jpeg_archive_cached(
    archive: Path,
    split: str,
    cache_dir: Path | None = None,
    expected_sha256: str | None = CIFAR10_JPG_SHA256,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N], classes)`` of one split of the archive.

    Checks the archive's sha256 (when ``expected_sha256`` is given), then reads the cache, or
    decodes the archive and writes the cache. A cache that cannot be written only logs a warning.
    """
    digest = sha256_file(archive)
    if expected_sha256 is not None and digest != expected_sha256:
        raise WrongArchiveError(
            f"wrong archive {str(archive)!r}: sha256 expected {expected_sha256}, actual {digest} "
            "(a truncated or different file; fetch it again from shared/data)"
        )
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache = _cache_path(cache_dir, digest)
    if cache.exists():
        try:
            return _read_cache(cache, digest, split)
        except Exception as e:  # stale, truncated or foreign file: rebuild it
            log.warning("rebuilding CIFAR-10 cache %s: %s", cache, e)
    decoded = _UNCACHED.get(digest)  # decoded earlier in this process, when no cache was written
    if decoded is None:
        log.info("decoding %s once (about 15 s); cache: %s", archive, cache)
        decoded = decode_jpeg_archive(archive)
        try:
            _write_cache(cache, digest, decoded)
        except OSError as e:
            warn_cache_unwritable(cache, e, "the archive is decoded again by every run")
            _UNCACHED.clear()  # keep one archive: the other split of the same run needs it
            _UNCACHED[digest] = decoded
    if split not in decoded:
        raise ValueError(f"{archive}: no split {split!r}; found {sorted(decoded)}")
    return decoded[split]


#: the last archive decoded in this process whose cache could not be written, by sha256
_UNCACHED: dict[str, dict] = {}


# --------------------------------------------------------------------------- pickled batches


def _unpickle(f: IO[bytes], name: str) -> dict:
    obj = pickle.load(f, encoding="bytes")
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _iter_members(root: Path, folder: str, names: list[str]) -> Iterator[tuple[str, dict]]:
    """Yield ``(name, unpickled dict)`` from ``root/folder/`` or ``root/<folder-tarball>``."""
    directory = root / folder
    if directory.is_dir():
        for n in names:
            p = directory / n
            if not p.is_file():
                raise DataNotFoundError(f"{directory}: missing {n!r} (expected {names})")
            with open(p, "rb") as f:
                yield str(p), _unpickle(f, str(p))
        return
    tarball = root / f"{folder.replace('-batches-py', '-python')}.tar.gz"
    found: dict[str, dict] = {}
    with tarfile.open(tarball, "r|gz") as tar:  # one streaming pass, no seeking back
        for member in tar:
            base = member.name.split("/")[-1]
            if member.isfile() and base in names and base not in found:
                f = tar.extractfile(member)
                assert f is not None
                found[base] = _unpickle(f, f"{tarball}:{base}")
    for n in names:
        if n not in found:
            raise DataNotFoundError(f"{tarball}: missing member {n!r} (expected {names})")
        yield f"{tarball}:{n}", found[n]


def _get(d: dict, key: bytes, name: str) -> object:
    if key not in d:
        raise ValueError(f"{name}: no key {key!r}; keys: {sorted(d)}")
    return d[key]


def _batches_to_dataset(
    batches: list[tuple[str, dict]], label_key: bytes, classes: list[str]
) -> ArrayDataset:
    images, labels = [], []
    for name, d in batches:
        data = np.asarray(_get(d, b"data", name), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{name}: data must be [N, 3072], got {data.shape}")
        lab = np.asarray(_get(d, label_key, name), dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise ValueError(f"{name}: {data.shape[0]} images but {lab.shape} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return ArrayDataset(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes
    )


def _has_python_format(root: Path, folder: str, tarball: str) -> bool:
    return (root / folder).is_dir() or (root / tarball).is_file()


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_SPLITS)}")


def load_cifar10(root: Path, split: str = "train", cache_dir: Path | None = None) -> ArrayDataset:
    """CIFAR-10 ``split`` (``train``: 50,000, ``test``: 10,000) as uint8 ``[N, 3, 32, 32]``."""
    _check_split(split)
    root = Path(root)
    if (root / "data_batch_1").is_file():  # root is the extracted folder itself
        root, folder = root.parent, root.name
    else:
        folder = "cifar-10-batches-py"
    if _has_python_format(root, folder, "cifar-10-python.tar.gz"):
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        batches = list(_iter_members(root, folder, [*names, "batches.meta"]))
        meta_name, meta = batches.pop()
        classes = [c.decode() for c in _get(meta, b"label_names", meta_name)]  # type: ignore[union-attr]
        return _batches_to_dataset(batches, b"labels", classes)
    archive = root / CIFAR10_JPG_NAME
    if archive.is_file():
        images, labels, classes = load_jpeg_archive_cached(archive, split, cache_dir)
        return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes)
    raise DataNotFoundError(
        f"CIFAR-10 not found in {str(root)!r}: expected {CIFAR10_JPG_NAME} or "
        "cifar-10-python.tar.gz or cifar-10-batches-py/ (pass --data DIR or set SIMPRUNE_DATA=DIR)"
    )


def load_cifar100(root: Path, split: str = "train", cache_dir: Path | None = None) -> ArrayDataset:
    """CIFAR-100 ``split`` with fine labels (100 classes) as uint8 ``[N, 3, 32, 32]``."""
    del cache_dir  # the pickled format loads fast; nothing to cache
    _check_split(split)
    root = Path(root)
    if (root / "meta").is_file() and (root / "train").is_file():
        root, folder = root.parent, root.name
    else:
        folder = "cifar-100-python"
    if not _has_python_format(root, folder, "cifar-100-python.tar.gz"):
        raise DataNotFoundError(
            f"CIFAR-100 not found in {str(root)!r}: expected cifar-100-python.tar.gz or "
            "cifar-100-python/ (pass --data DIR or set SIMPRUNE_DATA=DIR)"
        )
    batches = list(_iter_members(root, folder, [split, "meta"]))
    meta_name, meta = batches.pop()
    classes = [c.decode() for c in _get(meta, b"fine_label_names", meta_name)]  # type: ignore[union-attr]
    return _batches_to_dataset(batches, b"fine_labels", classes)
