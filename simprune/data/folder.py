"""Image folders: ``root/<split>/<class>/<image>``, decoded with PIL, cached when small.

Classes: one class list serves every split. It is the sorted list of the class folders of the
training split ``root/train`` that hold at least one image, so a label means the same class in
``train/``, ``test/`` and ``val/``. A class folder of another split that the training split lacks
(or whose training folder is empty) is an error naming it: k-NN and top-1 could never be right on
it. Empty class folders are skipped with a :class:`~simprune.data.base.DataWarning` that gives
their count and names (an empty folder would otherwise shift every later label). Without a
``train/`` folder a split uses its own class folders.

Each item is resized so that its shorter side is ``load_size`` (bicubic, PIL's antialiasing) and
centre-cropped to ``load_size x load_size``, giving uint8 ``[3, S, S]`` (greyscale, palette and
RGBA images are converted to RGB). JPEGs are decoded at the smallest DCT scale that still gives
at least ``load_size`` pixels (PIL's ``draft``), which is much faster for large photos. The random
crops of training are made later, on the batch, by :mod:`simprune.data.augment`. The trainer
derives ``load_size`` from the recipe (:func:`default_load_size`).

Cache: a split whose decoded array (``N * 3 * S * S`` bytes) fits the limit (``cache_mb``, default
``$SIMPRUNE_CACHE_MB`` or 2048; 0: never) is decoded once and stored as a uint8 ``.npy`` in the
cache folder, written atomically (:mod:`simprune.atomic`). The file name holds a hash of the
folder, ``load_size`` and every file's name, size and modification time, so an edited folder is
decoded again (and the older cache of that folder and size is removed). Later runs read the array
memory-mapped. A larger split is *streamed*: training reads it through worker processes that cut
every view from the whole image (:mod:`simprune.data.loader`, :mod:`simprune.data.crops`);
evaluation decodes its ``load_size`` squares batch by batch. A data folder holding
``shards.json`` is read as tar shards (:mod:`simprune.data.shards`).

Corrupt images: :class:`~simprune.data.base.CorruptImageError` names the file and says how to fix
it (replace or remove the file). Files are not opened when the folder is listed, so a broken file
is found when it is read (when the cache is built, or in the batch that holds it).
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from simprune.atomic import atomic_write

from .base import (
    CorruptImageError,
    DataNotFoundError,
    DataWarning,
    cache_limit_mb,
    default_cache_dir,
    warn_cache_unwritable,
)
from .crops import CropSpec, cut_crops

__all__ = [
    "IMAGE_EXTENSIONS",
    "TRAIN_SPLIT",
    "ImageFolderDataset",
    "class_folders",
    "default_load_size",
    "load_image",
    "load_imagefolder",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
#: the split whose class folders define the classes of every split
TRAIN_SPLIT = "train"
_CACHE_VERSION = 1


def default_load_size(global_size: int) -> int:
    """The decode size for crops of ``global_size`` px: ``ceil(global_size * 256 / 224)``, the
    usual resize-to-crop ratio (256 for 224-px crops, 37 for 32, 74 for 64)."""
    return math.ceil(global_size * 256 / 224)


def resize_crop(img: Image.Image, load_size: int) -> Tensor:
    """An opened image: RGB, shorter side to ``load_size`` (bicubic), centre crop -> uint8
    ``[3, S, S]``."""
    img = img.convert("RGB")
    w, h = img.size
    f = load_size / min(w, h)
    nw, nh = max(load_size, round(w * f)), max(load_size, round(h * f))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - load_size) // 2, (nh - load_size) // 2
    img = img.crop((left, top, left + load_size, top + load_size))
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.reshape(load_size, load_size, 3).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, load_size: int) -> Tensor:
    """Decode ``path``, shorter side to ``load_size``, centre crop -> uint8 ``[3, S, S]``."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # decode at a reduced DCT scale when that still covers S
                img.draft("RGB", (load_size, load_size))
            return resize_crop(img, load_size)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise corrupt_image(path, e) from e


def corrupt_image(name: str | Path, err: Exception) -> CorruptImageError:
    """The error for an image that cannot be decoded: names it (a file, or a shard member) and
    says what to do."""
    return CorruptImageError(
        f"cannot decode image {str(name)!r} ({type(err).__name__}: {err}). Replace it with a "
        "readable copy, or delete it (or move it out of the data folder), then run the same "
        "command again")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def class_folders(split_dir: str | Path) -> dict[str, list[Path]]:
    """``{class folder name: sorted image files}`` of a split folder, empty folders included."""
    split_dir = Path(split_dir)
    return {d.name: _image_files(d) for d in sorted(split_dir.iterdir()) if d.is_dir()}


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


class ImageFolderDataset(Dataset):
    """``root/<split>/<class>/*`` images; ``__getitem__ -> (uint8 [3, S, S], label)``.

    Args:
        folder: the split folder.
        load_size: side ``S`` of the returned images.
        classes: the class list (labels index it); default: this folder's non-empty class
            folders. A non-empty class folder missing from ``classes`` is a ``ValueError``.
        reference: where ``classes`` came from, for messages (e.g. the training split folder).

    Attributes:
        samples: ``(path, label)`` per item, sorted by class then file name.
        labels: int64 ``[N]``.
        classes: class names; ``classes[k]`` is the name of label ``k``.
        load_size: side ``S`` of the returned images.
        images: the decoded uint8 ``[N, 3, S, S]`` array when cached (else ``None``).
        workers: threads that decode a batch when nothing is cached (0: the calling thread).
    """

    def __init__(self, folder: str | Path, load_size: int = 256, classes: Sequence[str] | None = None,
                 reference: str | Path | None = None) -> None:
        folder = Path(folder)
        if isinstance(load_size, bool) or not isinstance(load_size, int) or load_size < 1:
            raise ValueError(f"load_size must be an integer >= 1 (pixels), got {load_size!r}")
        if not folder.is_dir():
            raise DataNotFoundError(f"image folder {str(folder)!r} does not exist")
        found = class_folders(folder)
        if not found:
            raise DataNotFoundError(f"{str(folder)!r} has no class sub-folders (<class>/<image>)")
        empty = [c for c, files in found.items() if not files]
        if len(empty) == len(found):
            raise DataNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {str(folder)!r}"
            )
        if empty:
            warnings.warn(
                f"{len(empty)} of {len(found)} class folders in {str(folder)!r} hold no images and "
                f"are skipped: {_names(empty)}", DataWarning, stacklevel=2)
        if classes is None:
            classes = [c for c, files in found.items() if files]
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c, files in found.items() if files and c not in index]
        if unknown:
            ref = f"the training split {str(reference)!r}" if reference else "the class list"
            raise ValueError(
                f"class folder(s) {_names(unknown)} of {str(folder)!r} are not classes of {ref} "
                f"(missing or empty there); valid classes: {_names(self.classes)}. Every split "
                "must use the training split's classes: add training images for them, or remove "
                "them from this split")
        self.samples: list[tuple[Path, int]] = [
            (p, index[c]) for c, files in found.items() if files for p in files
        ]
        self.samples.sort(key=lambda s: (s[1], s[0].name))
        self.labels = torch.tensor([lab for _, lab in self.samples], dtype=torch.int64)
        self.load_size = load_size
        self.folder = folder
        self.images: np.ndarray | None = None
        self.workers = 0
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        if self.images is not None:
            return torch.from_numpy(np.array(self.images[index])), label
        return load_image(path, self.load_size), label

    @property
    def streamed(self) -> bool:
        """Not cached: training reads it through :mod:`simprune.data.loader`, crops cut from the
        whole images (:mod:`simprune.data.crops`)."""
        return self.images is None

    def load_crops(self, index: int, spec: CropSpec, gen: torch.Generator) -> tuple[list[Tensor], Tensor]:
        """The views :func:`~simprune.data.crops.cut_crops` cuts from item ``index``'s whole image."""
        path = self.samples[index][0]
        try:
            return cut_crops(path, spec, gen)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise corrupt_image(path, e) from e

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``idx`` int64 ``[B]`` -> ``(uint8 [B, 3, S, S], int64 [B])``: a gather from the cache,
        else the batch decoded (in ``workers`` threads when > 0)."""
        rows = torch.as_tensor(idx, dtype=torch.int64).tolist()
        labels = self.labels[rows] if rows else torch.zeros(0, dtype=torch.int64)
        if self.images is not None:
            return torch.from_numpy(np.take(self.images, rows, axis=0)), labels
        paths = [self.samples[i][0] for i in rows]
        if self.workers > 0 and len(paths) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers)
            images = list(self._pool.map(lambda p: load_image(p, self.load_size), paths))
        else:
            images = [load_image(p, self.load_size) for p in paths]
        if not images:
            return torch.zeros(0, 3, self.load_size, self.load_size, dtype=torch.uint8), labels
        return torch.stack(images), labels

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded split (``N * 3 * S * S``)."""
        return len(self) * 3 * self.load_size * self.load_size

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.folder)!r}, n={len(self)}, "
            f"classes={len(self.classes)}, load_size={self.load_size}, "
            f"cached={self.images is not None})"
        )


# --------------------------------------------------------------------------- cache


def _listing_key(ds: ImageFolderDataset) -> tuple[str, str]:
    """``(folder key, listing key)``: hashes of (folder, load size) and of every file's name, size
    and modification time."""
    where = hashlib.sha256(f"{ds.folder.resolve()}\0{ds.load_size}\0{_CACHE_VERSION}".encode())
    listing = hashlib.sha256()
    for path, _ in ds.samples:
        st = path.stat()
        listing.update(f"{path.parent.name}/{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return where.hexdigest()[:12], listing.hexdigest()[:16]


def _cache_path(cache_dir: Path, ds: ImageFolderDataset) -> Path:
    where, listing = _listing_key(ds)
    return cache_dir / f"imagefolder-{ds.folder.name}-{ds.load_size}px-{where}-{listing}.npy"


def _decode_all(ds: ImageFolderDataset, progress: bool) -> np.ndarray:
    out = np.empty((len(ds), 3, ds.load_size, ds.load_size), dtype=np.uint8)
    from tqdm import tqdm

    bar = tqdm(total=len(ds), desc=f"decoding {ds.folder.name}/ at {ds.load_size} px (once, cached)",
               unit="img", dynamic_ncols=True, mininterval=1.0, disable=not progress)
    batch = 256
    try:
        for start in range(0, len(ds), batch):
            idx = torch.arange(start, min(len(ds), start + batch))
            out[start:start + len(idx)] = ds.get_batch(idx)[0].numpy()
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def _read_cache(path: Path, ds: ImageFolderDataset) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    want = (len(ds), 3, ds.load_size, ds.load_size)
    if arr.dtype != np.uint8 or arr.shape != want:
        raise ValueError(f"holds {arr.dtype} {arr.shape}, expected uint8 {want}")
    return arr


def cache_folder(ds: ImageFolderDataset, cache_dir: Path, limit_mb: int, progress: bool = False) -> bool:
    """Read ``ds`` from its cache file, or decode it and write one, when it fits ``limit_mb``.

    Returns whether ``ds.images`` is now set. A cache that cannot be read is rebuilt; one that
    cannot be written only logs a warning (the split is then used from memory this time).
    """
    if limit_mb <= 0 or ds.nbytes > limit_mb * 2**20:
        if limit_mb > 0:
            log.info("not caching %s: %.0f MB decoded exceeds the %d MB limit ($SIMPRUNE_CACHE_MB)",
                     ds.folder, ds.nbytes / 2**20, limit_mb)
        return False
    path = _cache_path(cache_dir, ds)
    if path.is_file():
        try:
            ds.images = _read_cache(path, ds)
            return True
        except Exception as e:  # truncated or foreign file: rebuild it
            log.warning("rebuilding the image folder cache %s: %s", path, e)
    images = _decode_all(ds, progress)
    try:
        atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
        prefix = path.name.rsplit("-", 1)[0] + "-"
        for old in cache_dir.glob(f"{prefix}*.npy"):
            if old != path:  # the same folder and size, an older listing
                old.unlink(missing_ok=True)
    except OSError as e:
        warn_cache_unwritable(path, e, "the images are decoded again by every run")
    ds.images = images
    return True


def load_imagefolder(
    root: Path, split: str = "train", cache_dir: Path | None = None, load_size: int = 256,
    cache_mb: int | str | None = None, progress: bool = False, workers: int = 0,
) -> ImageFolderDataset:
    """The split folder ``root/<split>`` with the training split's classes (see the module). A
    folder of tar shards is read by :func:`simprune.data.datasets.load_folder_or_shards`.

    Args:
        root: the data folder holding ``train/`` and the other splits.
        split: a sub-folder of ``root``.
        cache_dir: where the decoded split is cached (default ``$SIMPRUNE_CACHE``).
        load_size: decode size ``S`` (shorter side, then a centre crop).
        cache_mb: cache the split when ``N * 3 * S * S`` bytes fit this many MB (default
            ``$SIMPRUNE_CACHE_MB`` or 2048; 0: never).
        progress: show a progress bar while the cache is built.
        workers: threads that decode batches when the split is not cached.

    Raises:
        DataNotFoundError: a missing root or split (lists the sub-folders present), no images.
        ValueError: a class of this split that the training split lacks; a bad option.
    """
    root = Path(root)
    limit = cache_limit_mb(cache_mb)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if not root.is_dir():
        raise DataNotFoundError(f"image folder root {str(root)!r} does not exist")
    if not (root / split).is_dir():
        present = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise DataNotFoundError(
            f"no split folder {split!r} in image folder {str(root)!r}; valid (sub-folders): "
            f"{', '.join(present) if present else 'none'}"
        )
    train_dir = root / TRAIN_SPLIT
    classes = reference = None
    if split != TRAIN_SPLIT and train_dir.is_dir():
        classes = [c for c, files in class_folders(train_dir).items() if files]
        reference = train_dir
    ds = ImageFolderDataset(root / split, load_size=load_size, classes=classes, reference=reference)
    ds.workers = workers
    cache_folder(ds, default_cache_dir() if cache_dir is None else Path(cache_dir), limit, progress)
    return ds
