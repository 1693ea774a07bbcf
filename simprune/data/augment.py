"""Batched multi-view augmentation on the training device (DINO multi-crop, MoCo v3 two-crop).

The views of a batch are made with a handful of tensor operations (one ``grid_sample`` per crop
size, per-sample colour parameters as tensors), so a forward never syncs with the host and runs
unchanged on CPU or CUDA. Every view keeps its crop geometry: ``Views.boxes[v, b]`` is the region
``(x0, y0, x1, y1)`` of the original image (continuous pixel coordinates, see
:mod:`simprune.data.augment_ops`) that view ``v`` of sample ``b`` shows, and
``Views.flipped[v, b]`` says whether it is mirrored, so per-token decisions made on a view can be
drawn back onto the original image.

Recipe (DINO, Caron et al. 2021, and MoCo v3): random resized crop (area ``scale``, aspect ratio
log-uniform in ``(3/4, 4/3)``), horizontal flip p 0.5, colour jitter (brightness 0.4, contrast
0.4, saturation 0.2, hue 0.1) p 0.8 in a random order, grayscale p 0.2, Gaussian blur, solarize,
normalise. Differences from the per-image PIL pipeline, by design:

* The order of the four jitter operations is drawn once per call and crop size (torchvision draws
  it per image); whether jitter applies and its factors are per sample.
* Crops are resized bilinearly; when a crop can be downscaled by more than 2x (a large crop to a
  small view) each output pixel averages ``f x f`` bilinear samples (``antialias=True``; ``f`` is
  fixed by the shapes, 1 for CIFAR views).
* Gaussian blur: sigma uniform in ``blur_sigma = (0.1, 2.0)`` output pixels as in DINO, with an odd
  kernel of about ``blur_kernel_frac = 0.1`` of the view side (at least 3): 23 taps at 224 px as
  in BYOL/MoCo v3, 3 taps for 32-px and 16-px CIFAR views, where the short kernel bounds the blur
  (at sigma 2 it is close to a 3x3 box filter). Many CIFAR recipes drop blur altogether: set the
  blur probabilities to 0 for that.
* Single-channel images: brightness and contrast apply; saturation, hue and grayscale are no-ops
  and are skipped. The output keeps the input's channel count.

Randomness comes only from torch's global generators (the CPU one for the jitter order, the one of
the images' device for everything else), and every call draws the same number of values whatever
the probabilities, so saving and restoring the RNG states reproduces the views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import augment_ops as ops
from .crops import Crops
from .eval_transform import EvalTransform
from .stats import IMAGENET_MEAN, IMAGENET_STD, dataset_stats

__all__ = [
    "Views",
    "MultiCropConfig",
    "MultiCropAugment",
    "TwoCropConfig",
    "TwoCropAugment",
    "EvalTransform",
    "dino_augment",
    "moco_v3_augment",
    "blur_kernel_size",
]

_N_BOX = 2 * ops.N_TRIES + 2  # uniforms per sample for the crop box
# then: flip, jitter on, 4 jitter factors, grayscale, blur on, blur sigma, solarize
_FLIP, _JITTER, _GRAY, _BLUR, _SIGMA, _SOLAR = (_N_BOX + i for i in (0, 1, 6, 7, 8, 9))
_N_RAND = _N_BOX + 10


@dataclass
class Views:
    """The views of one batch.

    Attributes:
        globals: global views, each float ``[B, C, g, g]``, normalised.
        locals: local views, each float ``[B, C, l, l]`` (empty for two-crop recipes).
        boxes: float ``[V, B, 4]``, ``(x0, y0, x1, y1)`` in pixels of the original image,
            ``V = len(globals) + len(locals)``, globals first.
        flipped: bool ``[V, B]``, whether the view is mirrored horizontally.
    """

    globals: list[Tensor]
    locals: list[Tensor]
    boxes: Tensor
    flipped: Tensor

    @property
    def all(self) -> list[Tensor]:
        """Global views, then local views (the order of ``boxes``)."""
        return [*self.globals, *self.locals]

    @property
    def n_views(self) -> int:
        return len(self.globals) + len(self.locals)


def blur_kernel_size(size: int, frac: float = 0.1) -> int:
    """Odd Gaussian kernel of about ``frac * size`` taps, at least 3, below ``2 * size``."""
    if size < 2:
        return 1
    k = int(round(frac * size))
    return min(max(3, k + 1 - k % 2), 2 * size - 1)


@dataclass
class MultiCropConfig:
    """DINO multi-crop recipe; defaults are DINO's except the sizes (see module docstring)."""

    global_size: int
    local_size: int
    n_local: int
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # bright, contr, sat, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p_global: tuple[float, float] = (1.0, 0.1)
    blur_p_local: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p_global: tuple[float, float] = (0.0, 0.2)
    flip_p: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    color_ops: bool = True  # False: crop + flip + normalise only (jitter, gray, blur, solarize off)
    antialias: bool = True


@dataclass
class TwoCropConfig:
    """MoCo v3 two-crop recipe (both views the same size)."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p: tuple[float, float] = (0.0, 0.2)
    flip_p: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    color_ops: bool = True
    antialias: bool = True


class _Group(NamedTuple):
    """Views that share a size and a scale range; per-view blur/solarize probabilities."""

    size: int
    scale: tuple[float, float]
    blur_p: tuple[float, ...]
    solarize_p: tuple[float, ...]


class _Photo(NamedTuple):
    ratio: tuple[float, float]
    jitter: tuple[float, float, float, float]
    jitter_p: float
    grayscale_p: float
    blur_sigma: tuple[float, float]
    blur_kernel_frac: float
    flip_p: float
    color_ops: bool
    antialias: bool


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def _check_pair(name: str, p: tuple[float, ...]) -> None:
    if len(p) != 2:
        raise ValueError(f"{name} needs one probability per global view (2), got {p}")


def _color_jitter(x: Tensor, u: Tensor, photo: _Photo, order: list[int]) -> Tensor:
    """Jitter ``x [N, C, S, S]`` with ``u [N, 5]`` uniforms (apply flag, 4 factors)."""
    on = u[:, 0] < photo.jitter_p
    br, co, sa, hu = photo.jitter
    one = torch.ones_like(u[:, 0])

    def factor(col: int, width: float) -> Tensor:
        lo = max(0.0, 1.0 - width)
        return torch.where(on, lo + (1.0 + width - lo) * u[:, col], one)

    rgb = x.shape[1] == 3
    for op in order:
        if op == 0 and br > 0:
            x = ops.adjust_brightness(x, factor(1, br))
        elif op == 1 and co > 0:
            x = ops.adjust_contrast(x, factor(2, co))
        elif op == 2 and sa > 0 and rgb:
            x = ops.adjust_saturation(x, factor(3, sa))
        elif op == 3 and hu > 0 and rgb:
            x = ops.adjust_hue(x, torch.where(on, hu * (2 * u[:, 4] - 1), 0 * one))
    return x


def _augment_group(x: Tensor, group: _Group, photo: _Photo) -> tuple[Tensor, Tensor, Tensor]:
    """All views of one group: ``[V*B, C, S, S]`` crops, ``[V, B, 4]`` boxes, ``[V, B]`` flips."""
    b, c, h, w = x.shape
    v = len(group.blur_p)
    n = v * b
    u = torch.rand(n, _N_RAND, device=x.device)
    order = torch.randperm(4).tolist()  # CPU generator: no device sync
    boxes = ops.sample_crop_boxes(u[:, :_N_BOX], h, w, group.scale, photo.ratio).reshape(v, b, 4)
    flipped = (u[:, _FLIP] < photo.flip_p).reshape(v, b)
    ss = 1
    if photo.antialias:
        ss = ops.supersample_factor(h, w, group.size, group.scale[1], photo.ratio[1])
    out = ops.crop_resize(x, boxes, flipped, group.size, ss)
    return _photometric(out, u, order, group, photo), boxes, flipped


def _cropped_group(x: Tensor, boxes: Tensor, group: _Group, photo: _Photo) -> tuple[Tensor, Tensor, Tensor]:
    """Views of one group already cut by the loader (:class:`~simprune.data.crops.Crops`):
    ``x [B, V, C, S, S]`` in ``[0, 1]``, ``boxes [B, V, 4]`` -> as :func:`_augment_group`. The
    same random numbers are drawn (the crop columns go unused), then flip and the colour chain."""
    b, v = x.shape[:2]
    if v != len(group.blur_p) or x.shape[-1] != group.size or x.shape[-2] != group.size:
        raise ValueError(f"the loader cut views of {tuple(x.shape[1:])} for a group of {len(group.blur_p)} "
                         f"views of {group.size} px")
    u = torch.rand(v * b, _N_RAND, device=x.device)
    order = torch.randperm(4).tolist()  # CPU generator: no device sync
    flipped = (u[:, _FLIP] < photo.flip_p).reshape(v, b)
    out = x.transpose(0, 1).reshape(v * b, *x.shape[2:])  # view-major, as _augment_group
    out = torch.where(flipped.reshape(-1, 1, 1, 1), out.flip(-1), out)
    return _photometric(out, u, order, group, photo), boxes.transpose(0, 1), flipped


def _photometric(out: Tensor, u: Tensor, order: list[int], group: _Group, photo: _Photo) -> Tensor:
    """Colour jitter, grayscale, blur and solarize of ``out [V*B, C, S, S]`` (view-major)."""
    if not photo.color_ops:
        return out
    c = out.shape[1]
    b = out.shape[0] // len(group.blur_p)
    x = out
    out = _color_jitter(out, u[:, _JITTER : _JITTER + 5], photo, order)
    if c == 3 and photo.grayscale_p > 0:
        out = ops.grayscale(out, u[:, _GRAY] < photo.grayscale_p)

    def per_view(p: tuple[float, ...]) -> Tensor:
        # Per-sample probability [V*B], filled on the device (no host-to-device copy).
        return torch.cat([torch.full((b,), pi, device=x.device) for pi in p])

    if any(p > 0 for p in group.blur_p):
        lo, hi = photo.blur_sigma
        sigma = lo + (hi - lo) * u[:, _SIGMA]
        blur_on = u[:, _BLUR] < per_view(group.blur_p)
        sigma = torch.where(blur_on, sigma, torch.full_like(sigma, 1e-3))
        out = ops.gaussian_blur(out, sigma, blur_kernel_size(group.size, photo.blur_kernel_frac))
    if any(p > 0 for p in group.solarize_p):
        out = ops.solarize(out, u[:, _SOLAR] < per_view(group.solarize_p))
    return out


class _CropPipeline(nn.Module):
    """Shared engine: a list of view groups, photometric settings and normalisation."""

    def __init__(
        self,
        groups: list[_Group],
        n_global: int,
        photo: _Photo,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        for name, p in (
            ("jitter_p", photo.jitter_p),
            ("grayscale_p", photo.grayscale_p),
            ("flip_p", photo.flip_p),
        ):
            _check_prob(name, p)
        for g in groups:
            if g.size < 1:
                raise ValueError(f"crop size must be >= 1, got {g.size}")
            for p in (*g.blur_p, *g.solarize_p):
                _check_prob("blur/solarize probability", p)
        if min(photo.jitter) < 0 or photo.jitter[3] > 0.5:
            raise ValueError(f"jitter needs strengths >= 0 and hue <= 0.5, got {photo.jitter}")
        if not 0 < photo.blur_sigma[0] <= photo.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {photo.blur_sigma}")
        self.groups = groups
        self.n_global = n_global
        self.photo = photo
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, images: Tensor | Crops) -> Views:
        """``images``: uint8 ``[B, C, H, W]`` or float in ``[0, 1]``, on any device; or the
        :class:`~simprune.data.crops.Crops` the loader cut from whole images (then only flip and
        the colour operations are applied here, and the boxes are the loader's).

        Move the module to the images' device (``.to(device)``) to avoid copying ``mean``/``std``.
        """
        cut = isinstance(images, Crops)
        if cut and len(images.groups) != len(self.groups):
            raise ValueError(f"the loader cut {len(images.groups)} view groups for an augmentation "
                             f"of {len(self.groups)}")
        x = self.mean.new_zeros(0) if cut else ops.to_unit_float(images, self.mean.numel())
        dev = images.device if cut else x.device
        dtype = torch.float32 if cut else x.dtype
        mean, std = self.mean.to(dev, dtype), self.std.to(dev, dtype)
        views: list[Tensor] = []
        boxes, flips = [], []
        start = 0
        for i, group in enumerate(self.groups):
            if cut:
                n = len(group.blur_p)
                part = images.groups[i]
                unit = ops.to_unit_float(part.flatten(0, 1), self.mean.numel()).reshape(part.shape)
                out, bx, fl = _cropped_group(unit, images.boxes[:, start:start + n], group, self.photo)
                start += n
            else:
                out, bx, fl = _augment_group(x, group, self.photo)
            out = ops.normalize(out, mean, std)
            views.extend(out.chunk(len(group.blur_p), dim=0))
            boxes.append(bx)
            flips.append(fl)
        return Views(
            globals=views[: self.n_global],
            locals=views[self.n_global :],
            boxes=torch.cat(boxes, dim=0),
            flipped=torch.cat(flips, dim=0),
        )


def _photo(cfg: MultiCropConfig | TwoCropConfig) -> _Photo:
    return _Photo(
        cfg.ratio,
        cfg.jitter,
        cfg.jitter_p,
        cfg.grayscale_p,
        cfg.blur_sigma,
        cfg.blur_kernel_frac,
        cfg.flip_p,
        cfg.color_ops,
        cfg.antialias,
    )


class MultiCropAugment(_CropPipeline):
    """DINO multi-crop: 2 global views and ``n_local`` local views per image; returns ``Views``."""

    def __init__(self, cfg: MultiCropConfig) -> None:
        if cfg.n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {cfg.n_local}")
        _check_pair("blur_p_global", cfg.blur_p_global)
        _check_pair("solarize_p_global", cfg.solarize_p_global)
        groups = [_Group(cfg.global_size, cfg.global_scale, cfg.blur_p_global, cfg.solarize_p_global)]
        if cfg.n_local > 0:
            groups.append(
                _Group(
                    cfg.local_size, cfg.local_scale, (cfg.blur_p_local,) * cfg.n_local, (0.0,) * cfg.n_local
                )
            )
        super().__init__(groups, 2, _photo(cfg), cfg.mean, cfg.std)
        self.cfg = cfg


class TwoCropAugment(_CropPipeline):
    """MoCo v3 two-crop: 2 views of ``size``; ``Views.locals`` is empty."""

    def __init__(self, cfg: TwoCropConfig) -> None:
        _check_pair("blur_p", cfg.blur_p)
        _check_pair("solarize_p", cfg.solarize_p)
        super().__init__(
            [_Group(cfg.size, cfg.scale, cfg.blur_p, cfg.solarize_p)], 2, _photo(cfg), cfg.mean, cfg.std
        )
        self.cfg = cfg


#: dataset -> (global size, local size, number of local views)
_MULTICROP_SIZES = {
    "cifar10": (32, 16, 6),
    "cifar100": (32, 16, 6),
    "fashion_mnist": (28, 16, 6),
    "imagenet": (224, 96, 8),
    "imagefolder": (224, 96, 8),
}


def dino_augment(dataset: str, **overrides: object) -> MultiCropAugment:
    """DINO multi-crop for a known data set (sizes and statistics); ``overrides`` set any
    ``MultiCropConfig`` field, e.g. ``dino_augment("cifar10", n_local=4)``."""
    key = dataset.lower().replace("-", "_")
    if key not in _MULTICROP_SIZES:
        raise KeyError(f"no multi-crop preset for {dataset!r}; known: {sorted(_MULTICROP_SIZES)}")
    g, loc, n = _MULTICROP_SIZES[key]
    mean, std = dataset_stats(key)
    kw: dict[str, object] = dict(global_size=g, local_size=loc, n_local=n, mean=mean, std=std)
    kw.update(overrides)
    return MultiCropAugment(MultiCropConfig(**kw))  # type: ignore[arg-type]


def moco_v3_augment(
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    **overrides: object,
) -> TwoCropAugment:
    """MoCo v3's two crops at ``size``; ``overrides`` set any ``TwoCropConfig`` field."""
    return TwoCropAugment(TwoCropConfig(size=size, mean=mean, std=std, **overrides))  # type: ignore[arg-type]


@dataclass
class OneCropConfig:
    """Supervised (DeiT-style) training crop: one random-resized crop and a flip; no colour ops."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    antialias: bool = True


class OneCropAugment(_CropPipeline):
    """One view of ``size`` per image (``Views.globals`` has one entry)."""

    def __init__(self, cfg: OneCropConfig) -> None:
        photo = _Photo(cfg.ratio, (0.0, 0.0, 0.0, 0.0), 0.0, 0.0, (0.1, 2.0), 0.1, cfg.flip_p,
                       False, cfg.antialias)
        super().__init__([_Group(cfg.size, cfg.scale, (0.0,), (0.0,))], 1, photo, cfg.mean, cfg.std)
        self.cfg = cfg
