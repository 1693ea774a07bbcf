"""Projection heads: DINO's head and MoCo v3's projector and predictor."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, bn: bool, last_bn: bool) -> nn.Sequential:
    """``layers`` linear layers with GELU (DINO) or BN+ReLU (MoCo v3) between them."""
    mods: list[nn.Module] = []
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    for i in range(layers):
        last = i == layers - 1
        mods.append(nn.Linear(dims[i], dims[i + 1], bias=not bn))
        if bn and (not last or last_bn):
            mods.append(nn.BatchNorm1d(dims[i + 1], affine=not last))
        if not last:
            mods.append(nn.ReLU(inplace=True) if bn else nn.GELU())
    return nn.Sequential(*mods)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer to ``out_dim``.

    The last layer's weight direction is learned and its norm fixed to 1 (DINO's
    ``norm_last_layer``), so ``last_layer.weight`` holds the direction ``v`` and the layer applies
    ``v / ||v||`` row-wise.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256,
                 layers: int = 3) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, layers, bn=False, last_bn=False)
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, D]`` -> logits ``[B, out_dim]``."""
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_layer.weight, dim=1))


class MoCoHeads(nn.Module):
    """MoCo v3's BN-MLP projector (3 layers) and optional predictor (2 layers)."""

    def __init__(self, in_dim: int, dim: int = 256, hidden: int = 4096, predictor: bool = True) -> None:
        super().__init__()
        self.projector = mlp(in_dim, hidden, dim, 3, bn=True, last_bn=True)
        self.predictor = mlp(dim, hidden, dim, 2, bn=True, last_bn=True) if predictor else None

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, D]`` -> ``[B, dim]`` (projected, then predicted when there is a predictor)."""
        z = self.projector(x)
        return self.predictor(z) if self.predictor is not None else z
