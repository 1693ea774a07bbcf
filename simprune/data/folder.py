"""Image folders: ``root/<split>/<class>/<image>``, decoded lazily with PIL.

Each item is resized so that its shorter side is ``load_size`` (bicubic, PIL's antialiasing) and
centre-cropped to ``load_size x load_size``, giving uint8 ``[3, S, S]`` (greyscale, palette and
RGBA images are converted to RGB). The random crops of training are made later, on the batch, by
:mod:`simprune.data.augment`.

Corrupt images: ``__getitem__`` raises :class:`~simprune.data.base.CorruptImageError` naming the
file. Files are not opened when the folder is listed, so a broken file is found when it is read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .base import CorruptImageError, DataNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "load_image", "load_imagefolder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def load_image(path: str | Path, load_size: int) -> Tensor:
    """Decode ``path``, shorter side to ``load_size``, centre crop -> uint8 ``[3, S, S]``."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            f = load_size / min(w, h)
            nw, nh = max(load_size, round(w * f)), max(load_size, round(h * f))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - load_size) // 2, (nh - load_size) // 2
            img = img.crop((left, top, left + load_size, top + load_size))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise CorruptImageError(f"cannot decode image {str(path)!r}: {e}") from e
    return data.reshape(load_size, load_size, 3).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """Lazy ``root/<split>/<class>/*`` image set; ``__getitem__ -> (uint8 [3, S, S], label)``.

    Attributes:
        samples: ``(path, label)`` per item, sorted by class then file name.
        labels: int64 ``[N]``.
        classes: sorted class folder names.
        load_size: side ``S`` of the returned images.
    """

    def __init__(self, folder: str | Path, load_size: int = 256) -> None:
        folder = Path(folder)
        if load_size < 1:
            raise ValueError(f"load_size must be >= 1, got {load_size}")
        if not folder.is_dir():
            raise DataNotFoundError(f"image folder {str(folder)!r} does not exist")
        self.classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if not self.classes:
            raise DataNotFoundError(f"{str(folder)!r} has no class sub-folders (<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            files = sorted(
                p for p in (folder / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            self.samples.extend((p, label) for p in files)
        if not self.samples:
            raise DataNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {str(folder)!r}"
            )
        self.labels = torch.tensor([lab for _, lab in self.samples], dtype=torch.int64)
        self.load_size = load_size
        self.folder = folder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.load_size), label

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.folder)!r}, n={len(self)}, "
            f"classes={len(self.classes)}, load_size={self.load_size})"
        )


def load_imagefolder(
    root: Path, split: str = "train", cache_dir: Path | None = None, load_size: int = 256
) -> ImageFolderDataset:
    """The split folder ``root/<split>``; a missing one raises ``DataNotFoundError`` listing the
    sub-folders present."""
    del cache_dir  # decoded lazily; nothing cached
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder root {str(root)!r} does not exist")
    if not (root / split).is_dir():
        present = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise DataNotFoundError(
            f"no split folder {split!r} in image folder {str(root)!r}; valid (sub-folders): "
            f"{', '.join(present) if present else 'none'}"
        )
    return ImageFolderDataset(root / split, load_size=load_size)
