"""Batched, device-agnostic augmentation primitives (pure tensor functions).

Every function works on a whole batch at once with per-sample parameters given as tensors, so
nothing here synchronises with the host (no ``.item()``, no Python loop over samples) and the same
code runs on CPU and CUDA. Randomness is never drawn here: callers pass uniform samples drawn from
torch's global RNG, which keeps the pipeline reproducible when a training loop saves and restores
``torch.get_rng_state()`` / ``torch.cuda.get_rng_state()``.

Images are float tensors in ``[0, 1]``, shape ``[N, C, H, W]``; colour operations expect ``C == 3``
(the callers skip them for single-channel images).

Crop boxes follow continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a
box ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H`` is a region of the
original image, and output pixel ``k`` of a crop of width ``S`` samples the point
``x0 + (k + 0.5) * (x1 - x0) / S`` (or, when flipped, ``x1 - (k + 0.5) * (x1 - x0) / S``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LUMA",
    "to_unit_float",
    "sample_crop_boxes",
    "crop_resize",
    "supersample_factor",
    "grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "gaussian_blur",
    "solarize",
    "normalize",
]

#: ITU-R 601 luma weights, as torchvision's ``rgb_to_grayscale`` and PIL's ``convert("L")`` use.
LUMA = (0.299, 0.587, 0.114)

N_TRIES = 10  # attempts per sample before falling back to a centre crop, as torchvision does


def to_unit_float(images: Tensor, n_channels: int) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float in ``[0, 1]``; float input is returned as is.

    Raises ``ValueError`` unless ``C == n_channels`` (the length of mean/std).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] != n_channels:
        raise ValueError(
            f"images have {images.shape[1]} channels but mean/std have {n_channels}; "
            "pass mean/std with one value per channel"
        )
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {images.dtype}")
    return images


def sample_crop_boxes(
    u: Tensor,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Random-resized-crop boxes from uniform samples, vectorised over samples.

    Follows torchvision's ``RandomResizedCrop.get_params``: area fraction uniform in ``scale``,
    aspect ratio log-uniform in ``ratio``, up to 10 attempts until the box fits in the image, else a
    centre crop with the aspect ratio clamped to ``ratio``. Boxes are continuous (not rounded).

    Args:
        u: uniform ``[0, 1)`` samples, ``[N, 2 * N_TRIES + 2]`` (20 for scale/ratio tries, 2 for
            the position).
        height, width: size of the original image in pixels.
        scale: ``(min, max)`` fraction of the image area.
        ratio: ``(min, max)`` aspect ratio ``w / h``.

    Returns:
        ``[N, 4]`` float boxes ``(x0, y0, x1, y1)`` in pixels of the original image.
    """
    if u.shape[-1] != 2 * N_TRIES + 2:
        raise ValueError(f"u must have {2 * N_TRIES + 2} columns, got shape {tuple(u.shape)}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    area = float(height * width)
    s = scale[0] + (scale[1] - scale[0]) * u[:, :N_TRIES]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(log_lo + (log_hi - log_lo) * u[:, N_TRIES : 2 * N_TRIES])
    w = torch.sqrt(area * s * r)
    h = torch.sqrt(area * s / r)
    ok = (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first fitting attempt
    w = torch.gather(w, 1, first).squeeze(1)
    h = torch.gather(h, 1, first).squeeze(1)
    # Fallback: the largest centred box with its aspect ratio clamped into ``ratio``.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    pos_x = torch.where(any_ok, u[:, -2], torch.full_like(w, 0.5))
    pos_y = torch.where(any_ok, u[:, -1], torch.full_like(h, 0.5))
    x0 = pos_x * (width - w)
    y0 = pos_y * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def supersample_factor(height: int, width: int, size: int, scale_max: float, ratio_max: float = 4 / 3) -> int:
    """Static supersampling factor (1..4) for anti-aliasing the largest possible downscale.

    Bilinear sampling already reads every input pixel up to a 2x downscale, so the factor is
    ``ceil(max downscale / 2)``: 1 for CIFAR views, 2 for e.g. 500-px images to 224-px views.
    Depends only on shapes and config (host values), never on the sampled boxes.
    """
    side = min(float(max(height, width)), math.sqrt(height * width * scale_max * ratio_max))
    return int(min(4, max(1, math.ceil(side / (2 * size) - 1e-6))))


def crop_resize(images: Tensor, boxes: Tensor, flipped: Tensor, size: int, supersample: int = 1) -> Tensor:
    """Crop ``V`` boxes per image and resize each to ``size x size`` (bilinear), flipping some.

    The ``V`` crops of one image are sampled in one ``grid_sample`` call by stacking their grids
    along the output height, so the input is never copied ``V`` times. With ``supersample = f > 1``
    each output pixel is the mean of ``f x f`` bilinear samples spread over its footprint (an
    anti-aliasing box filter); the sample centres stay those given in the module docstring.

    Args:
        images: float ``[B, C, H, W]``.
        boxes: ``[V, B, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels of ``images``.
        flipped: bool ``[V, B]``; ``True`` mirrors that crop horizontally.
        size: output side ``S``.
        supersample: factor ``f >= 1``.

    Returns:
        ``[V * B, C, S, S]``, view-major (rows ``v * B .. v * B + B - 1`` are view ``v``).
    """
    b, c, h, w = images.shape
    v = boxes.shape[0]
    if boxes.shape != (v, b, 4) or flipped.shape != (v, b):
        raise ValueError(
            f"boxes must be [V, B, 4] and flipped [V, B] with B={b}, got "
            f"{tuple(boxes.shape)} and {tuple(flipped.shape)}"
        )
    n = size * supersample
    dtype = images.dtype
    # Normalised output pixel centres in [-1, 1] (align_corners=False convention).
    t = (torch.arange(n, device=images.device, dtype=dtype) * 2 + 1) / n - 1
    bx = boxes.to(dtype).permute(1, 0, 2)  # [B, V, 4]
    half_w = (bx[..., 2] - bx[..., 0]) / w  # box half-width in normalised units
    half_h = (bx[..., 3] - bx[..., 1]) / h
    cx = (bx[..., 0] + bx[..., 2]) / w - 1
    cy = (bx[..., 1] + bx[..., 3]) / h - 1
    half_w = torch.where(flipped.t(), -half_w, half_w)
    gx = cx[..., None] + half_w[..., None] * t  # [B, V, n]
    gy = cy[..., None] + half_h[..., None] * t
    grid = torch.stack(
        [gx[:, :, None, :].expand(b, v, n, n), gy[:, :, :, None].expand(b, v, n, n)], dim=-1
    ).reshape(b, v * n, n, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if supersample > 1:
        out = F.avg_pool2d(out, supersample)
    return out.reshape(b, c, v, size, size).permute(2, 0, 1, 3, 4).reshape(v * b, c, size, size)


def _gray(x: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` of RGB ``[N, 3, H, W]``."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _per_sample(f: Tensor) -> Tensor:
    return f.reshape(-1, 1, 1, 1)


def grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """Replace RGB ``x [N, 3, H, W]`` by its luma (kept 3-channel) where ``apply [N]`` is true."""
    return torch.where(_per_sample(apply), _gray(x).expand_as(x), x)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(x * factor, 0, 1)`` with ``factor [N]``; ``x [N, C, H, W]``."""
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend ``x [N, C, H, W]`` with its mean grey level (per image) by ``factor [N]``."""
    lum = _gray(x) if x.shape[1] == 3 else x
    mean = lum.mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factor)
    return (x * f + mean * (1 - f)).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend RGB ``x [N, 3, H, W]`` with its greyscale version by ``factor [N]``."""
    f = _per_sample(factor)
    return (x * f + _gray(x) * (1 - f)).clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB ``x [N, 3, H, W]`` by ``shift [N]`` turns (in ``[-0.5, 0.5]``).

    Exact HSV hue rotation (value and saturation unchanged), written without a full HSV round
    trip: with ``V = max``, chroma ``Ch = max - min`` and hue ``h`` in sextants ``[0, 6)``,
    channel ``n`` (5, 3, 1 for R, G, B) is ``V - Ch * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + h) mod 6``.
    """
    vmax = x.amax(dim=1, keepdim=True)
    vmin = x.amin(dim=1, keepdim=True)
    chroma = vmax - vmin
    r, g, b = x.split(1, dim=1)
    # hue * chroma, in sextants: [-1, 1] (max = R), [1, 3] (max = G), [3, 5] (max = B)
    h = torch.where(
        r == vmax,
        g - b,
        torch.where(g == vmax, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4)),
    )
    # grey pixels (chroma 0) have h = 0 / eps = 0 and come out as vmax whatever the shift
    h = h.div_(chroma + 1e-12).add_(6 * _per_sample(shift))
    # 5, 3, 1 built on x's device (no host-to-device copy).
    n = (5 - 2 * torch.arange(3, device=x.device, dtype=x.dtype)).reshape(1, 3, 1, 1)
    k = torch.remainder(h + n, 6)
    return torch.addcmul(vmax, chroma, torch.minimum(k, 4 - k).clamp_(0, 1), value=-1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma [N]`` (pixels), reflect padding.

    A tiny sigma (e.g. ``1e-3``) gives a delta kernel, i.e. no blur, so callers can skip the blur
    for some samples without branching. ``x [N, C, H, W]``; ``kernel_size`` odd.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if kernel_size == 1:
        return x
    n, c, h, w = x.shape
    half = kernel_size // 2
    if half >= min(h, w):
        raise ValueError(f"kernel_size {kernel_size} too large for {h}x{w} images (must be < 2 * min side)")
    k = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half
    s = sigma.to(x.dtype).clamp_min(1e-3).reshape(n, 1)
    weight = torch.exp(-(k * k) / (2 * s * s))
    weight = (weight / weight.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, K]
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, weight.reshape(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, weight.reshape(n * c, 1, kernel_size, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def solarize(x: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels ``>= threshold`` (``x -> 1 - x``) in the samples where ``apply [N]`` is true."""
    return torch.where(_per_sample(apply) & (x >= threshold), 1 - x, x)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel; ``mean``, ``std`` are ``[C]``."""
    return (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
