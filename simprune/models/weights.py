"""Load timm/DeiT-compatible ViT weights from a ``state_dict``, ``.pth`` or ``.safetensors`` file.

Nothing is skipped silently: missing and unexpected keys are collected in a :class:`LoadReport`
and, unless ``strict=False``, raised as an error; a shape that does not fit is always an error
(``pos_embed`` of another grid is resampled instead, as is standard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import VisionTransformer


@dataclass
class LoadReport:
    """What happened to every key of a loaded state dict."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.resized:
            parts.append(f"resampled {self.resized}")
        if self.missing:
            parts.append(f"missing (left at init) {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected (not loaded) {self.unexpected}")
        return "; ".join(parts)


class WeightLoadError(ValueError):
    """A weight file does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read ``.safetensors`` or a torch checkpoint (``model``/``state_dict`` sub-dicts unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher", "student"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightLoadError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def _resample_pos_embed(pos: Tensor, target: Tensor, num_prefix: int) -> Tensor:
    """Bicubic resample of the patch part of ``pos: [1, P + g², D]`` to ``target``'s grid."""
    src, dst = pos.shape[1] - num_prefix, target.shape[1] - num_prefix
    gs, gd = math.isqrt(src), math.isqrt(dst)
    if gs * gs != src or gd * gd != dst or pos.shape[2] != target.shape[2]:
        raise WeightLoadError(
            f"pos_embed has shape {tuple(pos.shape)}, the model needs {tuple(target.shape)}; "
            "only square grids of the same width can be resampled"
        )
    grid = pos[:, num_prefix:].reshape(1, gs, gs, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(gd, gd), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :num_prefix], grid.flatten(2).transpose(1, 2).to(pos.dtype)], 1)


def load_weights(
    model: VisionTransformer,
    source: str | Path | dict[str, Tensor],
    strict: bool = True,
    prefix: str = "",
) -> LoadReport:
    """Load timm-named weights into ``model``.

    Args:
        source: a path (``.safetensors``/``.pth``) or a state dict.
        strict: raise on missing or unexpected keys (they are always listed in the report).
        prefix: strip this prefix from the file's keys first (e.g. ``"backbone."``).
    Raises:
        WeightLoadError: a shape does not fit, or (``strict``) keys are missing or unexpected.
    """
    sd = read_state_dict(source) if not isinstance(source, dict) else source
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = model.state_dict()
    report = LoadReport()
    new_sd: dict[str, Tensor] = {}
    bad_shapes = []
    for key, value in sd.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key == "pos_embed" and value.shape != own[key].shape:
            value = _resample_pos_embed(value, own[key], model.num_prefix_tokens)
            report.resized.append(key)
        if value.shape != own[key].shape:
            bad_shapes.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            continue
        new_sd[key] = value
        report.loaded.append(key)
    if bad_shapes:
        raise WeightLoadError("weight shapes do not fit the model: " + "; ".join(bad_shapes))
    report.missing = sorted(set(own) - set(new_sd))
    if strict and (report.missing or report.unexpected):
        raise WeightLoadError(f"state dict does not match the model: {report}. "
                              "Pass strict=False to load the matching part anyway.")
    model.load_state_dict(new_sd, strict=False)
    return report
