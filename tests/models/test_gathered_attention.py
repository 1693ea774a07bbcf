"""Gathered attention (Tri-Level E-ViT's sparse attention level) equals dense attention under the
mask that allows the same keys, forward and backward; it refuses a second connection form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simprune.models.layers import Attention, gathered_attention
from simprune.reducers.attn_topk import keys_to_mask


def random_keys(b: int, n: int, k: int, seed: int) -> torch.Tensor:
    """``[B, n-1, k]`` distinct key positions per patch query, the CLS key (0) first."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(n - 1, generator=g)[: k - 1]])
            for _ in range(b * (n - 1))]
    return torch.stack(rows).view(b, n - 1, k)


@pytest.mark.parametrize("n, k", [(9, 3), (17, 1), (6, 6)])
def test_gathered_equals_masked_attention(n, k):
    g = torch.Generator().manual_seed(n * 10 + k)
    b, h, hd = 2, 3, 4
    q, kk, v = (torch.randn(b, h, n, hd, generator=g, requires_grad=True) for _ in range(3))
    keys = random_keys(b, n, k, seed=n + k)
    mask = keys_to_mask(keys, n)
    assert mask[:, 1:].sum(-1).eq(k).all() and mask[:, 0].all()
    bias = torch.zeros(b, 1, n, n).masked_fill(~mask[:, None], float("-inf"))
    dense = F.scaled_dot_product_attention(q, kk, v, attn_mask=bias)
    sparse = gathered_attention(q, kk, v, keys, prefix=1)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    w = torch.randn(dense.shape, generator=g)
    gd = torch.autograd.grad((dense * w).sum(), (q, kk, v))
    gs = torch.autograd.grad((sparse * w).sum(), (q, kk, v))
    for a, c in zip(gs, gd):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_attention_module_takes_keys_and_refuses_two_forms():
    torch.manual_seed(0)
    attn = Attention(12, 3)
    x = torch.randn(2, 7, 12)
    keys = random_keys(2, 7, 3, seed=1)
    out, extras = attn(x, keys=keys, need=frozenset({"cls_attn"}))
    ref, ref_extras = attn(x, mask=keys_to_mask(keys, 7), need=frozenset({"cls_attn"}))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(extras.cls_attn, ref_extras.cls_attn)  # the CLS row is dense in both
    with pytest.raises(ValueError, match="cannot be combined"):
        attn(x, mask=keys_to_mask(keys, 7), keys=keys)
