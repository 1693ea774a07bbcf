"""Helpers for the backbone tests: tiny configs and an explicit, loop-based pre-norm ViT.

The reference below is written from the ViT/DeiT equations (pre-norm blocks, softmax attention,
GELU MLP) and timm's parameter layout (``qkv`` rows ordered ``[q; k; v]``, heads contiguous),
not from the library's code, so agreement checks both the maths and the weight naming.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from simprune.models import VisionTransformer, ViTConfig


def tiny_config(**overrides) -> ViTConfig:
    base = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, reduce_at=(2, 3))
    base.update(overrides)
    return ViTConfig(**base)


def tiny_model(seed: int = 0, scale: float = 1.0, **overrides) -> VisionTransformer:
    """A tiny ViT with seeded weights; ``scale`` multiplies every weight (peakier attention)."""
    torch.manual_seed(seed)
    model = VisionTransformer(tiny_config(**overrides))
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("weight") and p.dim() > 1:
                    p.mul_(scale)
                elif name.endswith("bias"):
                    p.normal_(0.0, 0.05)
    return model.eval()


def ref_layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ref_gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_attention_probs(
    x: Tensor, qkv_w: Tensor, qkv_b: Tensor, heads: int, size: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[list[Tensor], Tensor]:
    """One sample ``x: [n, D]`` (already normalised) -> per-head probabilities and values.

    Returns ``([H] list of [n, n] softmax matrices, v: [n, D])``. ``size: [n]`` adds ``log s_j``
    to every logit of key j; ``mask: [n, n]`` bool (True = may attend).
    """
    n, d = x.shape
    hd = d // heads
    qkv = x @ qkv_w.T + qkv_b
    q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
    probs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        rows = []
        for i in range(n):  # one query at a time: logits_ij = q_i·k_j / sqrt(hd) (+ log s_j)
            row = (k[:, sl] * q[i, sl]).sum(dim=1) / math.sqrt(hd)
            if size is not None:
                row = row + torch.log(size)
            if mask is not None:
                row = torch.where(mask[i], row, torch.full_like(row, float("-inf")))
            rows.append(row)
        logits = torch.stack(rows)
        e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        probs.append(e / e.sum(dim=1, keepdim=True))
    return probs, v


def ref_attention(x: Tensor, attn, size: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Explicit multi-head attention of one sample with the module ``attn``'s weights."""
    n, d = x.shape
    heads = attn.num_heads
    hd = d // heads
    probs, v = ref_attention_probs(x, attn.qkv.weight, attn.qkv.bias, heads, size, mask)
    out = torch.cat([probs[h] @ v[:, h * hd : (h + 1) * hd] for h in range(heads)], dim=1)
    return out @ attn.proj.weight.T + attn.proj.bias


def ref_patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), C·p·p]`` row-major patches, channels first in a patch."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch * patch)


@torch.no_grad()
def ref_vit_forward(model: VisionTransformer, images: Tensor) -> tuple[Tensor, Tensor]:
    """Final normalised tokens ``[B, 1+N, D]`` and head output, by explicit loops over samples."""
    sd = model.state_dict()
    p = model.cfg.patch_size
    d = model.cfg.embed_dim
    w_patch = sd["patch_embed.proj.weight"].reshape(d, -1)
    patches = ref_patchify(images, p) @ w_patch.T + sd["patch_embed.proj.bias"]
    outs = []
    for bi in range(images.shape[0]):
        x = torch.cat([sd["cls_token"][0], patches[bi]], dim=0) + sd["pos_embed"][0]
        for i, block in enumerate(model.blocks):
            pre = f"blocks.{i}."
            h = ref_layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
            x = x + ref_attention(h, block.attn)
            h = ref_layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
            h = ref_gelu(h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
            x = x + h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
        outs.append(ref_layer_norm(x, sd["norm.weight"], sd["norm.bias"]))
    tokens = torch.stack(outs)
    cls = tokens[:, 0]
    head = cls @ sd["head.weight"].T + sd["head.bias"] if "head.weight" in sd else cls
    return tokens, head
