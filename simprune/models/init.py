"""Parameter initialisation of the ViT: DeiT's (the default) and MoCo v3's.

MoCo v3 (Chen et al., 2021, section 4 and its ViT code description) trains ViTs with three changes
to the DeiT initialisation, all for stability early in training:

* a fixed 2-D sine-cosine position embedding (not learned);
* a random patch projection that is frozen (its gradient is stopped);
* Xavier-uniform weights for every linear layer, with the fused ``qkv`` matrix treated as three
  separate ``D × D`` matrices, and the CLS token drawn with std 1e-6.

These are separate switches (:class:`~simprune.models.vit.ViTConfig` ``pos_embed``,
``init`` and ``freeze_patch_embed``). The parameter names stay timm's, so weights saved either way
load into the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INITS = ("deit", "moco")
POS_EMBEDS = ("learned", "sincos")


def check_init_options(init: str, pos_embed: str, where: str = "") -> None:
    """Raise ``ValueError`` naming the valid values for an unknown ``init`` or ``pos_embed``."""
    for key, value, valid in (("init", init, INITS), ("pos_embed", pos_embed, POS_EMBEDS)):
        if value not in valid:
            raise ValueError(f"unknown {where}{key} {value!r}; valid: {', '.join(valid)}")


def sincos_pos_embed(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[1, 1 + gh·gw, dim]`` (the CLS row is zero).

    Patch ``(r, c)`` (row-major, as the patch tokens are ordered) gets
    ``[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]`` with ``ω_k = temperature^(-k / (dim/4))``,
    ``k = 0 .. dim/4 - 1``: the first half encodes the column, the second half the row.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    gh, gw = grid
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # [dim/4]
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                                torch.arange(gw, dtype=torch.float64), indexing="ij")
    ac = cols.reshape(-1, 1) * omega  # [gh·gw, dim/4]
    ar = rows.reshape(-1, 1) * omega
    table = torch.cat([ac.sin(), ac.cos(), ar.sin(), ar.cos()], dim=1)
    return torch.cat([table.new_zeros(1, dim), table]).unsqueeze(0).float()


def init_deit(model: nn.Module) -> None:
    """Truncated-normal(0.02) weights, zero biases, unit LayerNorms, as DeiT initialises."""
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_moco(model: nn.Module) -> None:
    """MoCo v3's initialisation (module docstring); the position embedding is left to the caller."""
    init_deit(model)  # LayerNorms and the position embedding as DeiT
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            fan_out, fan_in = m.weight.shape
            if name.endswith("qkv"):  # three D×D matrices stacked: Xavier for each of them
                fan_out //= 3
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    proj = model.patch_embed.proj
    fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    bound = math.sqrt(6.0 / (fan_in + proj.out_channels))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    nn.init.normal_(model.cls_token, std=1e-6)


__all__ = ["INITS", "POS_EMBEDS", "check_init_options", "init_deit", "init_moco", "sincos_pos_embed"]
