"""Crops cut from the whole image, per sample, where the image is decoded (the loader's workers).

The path of image folders that are not cached and of tar shards (:mod:`simprune.data.loader`).
Each sample's views are cut from the original photo with DINO's ``RandomResizedCrop`` geometry,
not from a ``load_size`` square: the crop box of every view is drawn with the algorithm of
torchvision's ``RandomResizedCrop.get_params`` from a per-sample :class:`torch.Generator`
(:func:`rrc_box`), the JPEG is decoded once at the smallest DCT scale that still gives every
view at least its target resolution (PIL's ``Image.draft``: 1/2, 1/4 or 1/8 of the photo's
side, so a 2000-px photo whose crops become 224-px views is decoded at about 500 px), and each box
is resized to its view size with PIL's antialiased bicubic filter, as DINO's
``RandomResizedCrop(..., interpolation=BICUBIC)`` does. Flip, colour jitter, grayscale, blur,
solarize and normalisation stay with the batched device augmentation (:mod:`simprune.data.augment`,
which takes a :class:`Crops` in place of images).

Geometry (``rrc_box``, torchvision's ``get_params``): area ``H * W``; up to 10 attempts draw a
target area fraction ``s ~ U(scale)`` and a log-uniform aspect ratio ``r = exp(U(log ratio))``;
``w = round(sqrt(area * s * r))``, ``h = round(sqrt(area * s / r))``; the first attempt with
``0 < w <= W`` and ``0 < h <= H`` places the box at ``top ~ randint(0, H - h + 1)``, ``left ~
randint(0, W - w + 1)``; if none fits, the centre crop with its aspect ratio clamped into
``ratio``. Boxes are whole pixels of the original image, recorded as ``(x0, y0, x1, y1)`` in
:attr:`Crops.boxes` (the coordinates ``Views.boxes`` uses, so ``simprune viz`` can draw them).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

__all__ = ["CropGroup", "CropSpec", "Crops", "crop_spec", "rrc_box", "cut_crops", "draft_request"]


class CropGroup(NamedTuple):
    """Views of one size: ``n_views`` crops of area fraction ``scale``, resized to ``size``."""

    size: int
    scale: tuple[float, float]
    n_views: int


class CropSpec(NamedTuple):
    """What the loader cuts per sample: the augmentation's view groups (globals first)."""

    groups: tuple[CropGroup, ...]
    ratio: tuple[float, float]

    @property
    def n_views(self) -> int:
        return sum(g.n_views for g in self.groups)


def crop_spec(augment: Any) -> CropSpec | None:
    """The crops a batched augmentation (:class:`~simprune.data.augment._CropPipeline`) cuts;
    ``None`` for another module (the loader then decodes ``load_size`` squares)."""
    groups = getattr(augment, "groups", None)
    photo = getattr(augment, "photo", None)
    if not groups or photo is None:
        return None
    return CropSpec(tuple(CropGroup(int(g.size), (float(g.scale[0]), float(g.scale[1])),
                                    len(g.blur_p)) for g in groups),
                    (float(photo.ratio[0]), float(photo.ratio[1])))


def _uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=gen))


def rrc_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
            gen: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` drawn from ``gen``: ``(top, left, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], gen)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], gen))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draft_request(width: int, height: int, boxes: list[tuple[int, int, int, int]],
                  sizes: list[int]) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for: the photo shrunk by the largest factor that still
    leaves every box (``(top, left, h, w)``) at least its view size on both sides."""
    f = min(min(h, w) / s for (_, _, h, w), s in zip(boxes, sizes))
    f = max(1.0, f)
    return max(1, math.ceil(width / f)), max(1, math.ceil(height / f))


@dataclass
class Crops:
    """The views of a batch, cut per sample from the whole images (before flip and colour).

    Attributes:
        groups: per view group, uint8 ``[B, V_g, C, S_g, S_g]``.
        boxes: float ``[B, V, 4]``, ``(x0, y0, x1, y1)`` in pixels of each original image, views
            in the augmentation's order (globals first).
    """

    groups: list[Tensor]
    boxes: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Crops:
        return Crops([g.to(device, non_blocking=non_blocking) for g in self.groups],
                     self.boxes.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Crops:
        """Page-locked copies (what ``DataLoader(pin_memory=True)`` calls)."""
        return Crops([g.pin_memory() for g in self.groups], self.boxes.pin_memory())

    @staticmethod
    def stack(items: list[tuple[list[Tensor], Tensor]]) -> Crops:
        """Per-sample ``(per group uint8 [V_g, C, S, S], boxes [V, 4])`` -> a batch."""
        n_groups = len(items[0][0])
        return Crops([torch.stack([it[0][g] for it in items]) for g in range(n_groups)],
                     torch.stack([it[1] for it in items]))


def _to_tensor(img: Image.Image) -> Tensor:
    w, h = img.size
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.reshape(h, w, 3).permute(2, 0, 1)


def cut_crops(source: Any, spec: CropSpec, gen: torch.Generator) -> tuple[list[Tensor], Tensor]:
    """Open ``source`` (a path, or the encoded bytes), draw every view's box from ``gen`` and cut
    it -> (per group uint8 ``[V_g, 3, S_g, S_g]``, float boxes ``[V, 4]`` as ``(x0, y0, x1, y1)``).

    Errors of PIL propagate (the caller names the file)."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with Image.open(fp) as img:
        width, height = img.size
        boxes: list[tuple[int, int, int, int]] = []
        sizes: list[int] = []
        for g in spec.groups:
            for _ in range(g.n_views):
                boxes.append(rrc_box(height, width, g.scale, spec.ratio, gen))
                sizes.append(g.size)
        if img.format == "JPEG":
            img.draft("RGB", draft_request(width, height, boxes, sizes))
        rgb = img.convert("RGB")
    sx, sy = rgb.size[0] / width, rgb.size[1] / height
    views = []
    for (top, left, h, w), s in zip(boxes, sizes):
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        views.append(_to_tensor(rgb.resize((s, s), Image.Resampling.BICUBIC, box=box)))
    out, k = [], 0
    for g in spec.groups:
        out.append(torch.stack(views[k:k + g.n_views]))
        k += g.n_views
    xyxy = torch.tensor([[left, top, left + w, top + h] for top, left, h, w in boxes],
                        dtype=torch.float32)
    return out, xyxy
