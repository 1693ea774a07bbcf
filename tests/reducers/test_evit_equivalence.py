"""EViT, EViT without fusion and the attention top-K selector against loop re-derivations.

EViT (Liang et al. 2022, METHOD.md): score = CLS attention averaged over heads, post-softmax; keep the
top K patches in their original order; the others are fused into one token ``Σ a_i x_i`` with the raw
attention weights, appended after the kept ones.
"""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import images, point_from_state, softmax_rows, synthetic_point, tiny_model

from simprune.reducers import create_reducer


def ref_topk(scores: list[float], k: int) -> list[int]:
    """Positions of the k largest scores, in original order (a plain sort, no torch.topk)."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    return sorted(ranked[:k])


def ref_fused(x_patches, attn_patches, kept):
    """``Σ_{i dropped} a_i x_i`` by a loop."""
    total = torch.zeros(x_patches.shape[-1], dtype=torch.float64)
    for i in range(x_patches.shape[0]):
        if i not in kept:
            total += float(attn_patches[i]) * x_patches[i].double()
    return total


def _random_point(b=3, n=20, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1 + n, d, generator=g)
    attn = softmax_rows(3 * torch.randn(b, 1 + n, generator=g))
    return synthetic_point(x, cls_attn=attn), x, attn


@pytest.mark.parametrize("k", [1, 7, 19])
def test_evit_matches_loop(k):
    point, x, attn = _random_point()
    out = create_reducer("evit")(point, k)
    assert out.num_patches == k + 1
    for b in range(3):
        scores = attn[b, 1:].tolist()
        kept = ref_topk(scores, k)
        assert out.ids[b].tolist() == [*kept, -1]
        assert torch.equal(out.x[b, 0], x[b, 0])
        for j, pos in enumerate(kept):
            assert torch.equal(out.patches[b, j], x[b, 1 + pos])
        fused = ref_fused(x[b, 1:], attn[b, 1:], kept)
        torch.testing.assert_close(out.patches[b, k].double(), fused, atol=1e-6, rtol=1e-5)
        # raw weights: not a weighted mean of the dropped tokens
        dropped_mass = sum(s for i, s in enumerate(scores) if i not in kept)
        assert dropped_mass < 1.0
        for orig in range(20):
            assert out.source[b, orig].item() == (kept.index(orig) if orig in kept else k)


@pytest.mark.parametrize("name", ["evit_nofuse", "attn_topk"])
@pytest.mark.parametrize("k", [1, 7, 19])
def test_topk_without_fusion_matches_loop(name, k):
    point, x, attn = _random_point(seed=1)
    g = torch.Generator().manual_seed(2)
    point.extras.q = torch.randn(3, 2, 21, 4, generator=g)
    point.extras.k = torch.randn(3, 2, 21, 4, generator=g)
    out = create_reducer(name)(point, k)
    assert out.num_patches == k and out.attn_mask is None
    for b in range(3):
        kept = ref_topk(attn[b, 1:].tolist(), k)
        assert out.ids[b].tolist() == kept
        assert torch.equal(out.patches[b], x[b, 1:][kept])
        assert [out.source[b, i].item() for i in range(20)] == [
            kept.index(i) if i in kept else -1 for i in range(20)]


def test_fused_token_is_ordinary_at_the_next_point():
    point, x, attn = _random_point(b=1, n=10, seed=3)
    first = create_reducer("evit")(point, 4)
    fused_orig = [i for i in range(10) if first.source[0, i].item() == 4]
    assert len(fused_orig) == 6
    # next point: the fused token (position 4) gets the highest score -> kept like any token
    scores = torch.tensor([[0.05, 0.1, 0.2, 0.03, 0.07, 0.55]])  # CLS, 4 kept, fused
    second = create_reducer("evit")(point_from_state(first, cls_attn=scores), 2)
    assert second.ids[0].tolist() == [first.ids[0, 1].item(), -1, -1]
    assert torch.equal(second.patches[0, 1], first.patches[0, 4])  # the old fused token, unchanged
    for orig in fused_orig:
        assert second.source[0, orig].item() == 1
    # now it gets the lowest score -> fused into the new one with its weight
    scores = torch.tensor([[0.05, 0.3, 0.2, 0.25, 0.19, 0.01]])
    third = create_reducer("evit")(point_from_state(first, cls_attn=scores), 2)
    assert third.ids[0].tolist() == [first.ids[0, 0].item(), first.ids[0, 2].item(), -1]
    expected = 0.2 * first.patches[0, 1] + 0.19 * first.patches[0, 3] + 0.01 * first.patches[0, 4]
    torch.testing.assert_close(third.patches[0, 2], expected)
    for orig in fused_orig:
        assert third.source[0, orig].item() == 2


def _explicit_cls_attention(model, imgs, block):
    """Head-averaged softmax CLS row computed by loops from the block's qkv weights."""
    state = model.embed(imgs)
    for blk in model.blocks[: block - 1]:
        state = blk(state)
    blk = model.blocks[block - 1]
    h = blk.norm1(state.x).double()
    w, bias = blk.attn.qkv.weight.double(), blk.attn.qkv.bias.double()
    d, heads = model.embed_dim, blk.attn.num_heads
    hd = d // heads
    rows = []
    for b in range(imgs.shape[0]):
        qkv = h[b] @ w.T + bias
        avg = torch.zeros(h.shape[1], dtype=torch.float64)
        for head in range(heads):
            q_cls = qkv[0, head * hd : (head + 1) * hd]
            logits = [float(q_cls @ qkv[j, d + head * hd : d + (head + 1) * hd]) / math.sqrt(hd)
                      for j in range(h.shape[1])]
            m = max(logits)
            e = [math.exp(v - m) for v in logits]
            avg += torch.tensor([v / sum(e) for v in e], dtype=torch.float64) / heads
        rows.append(avg)
    return torch.stack(rows)


@torch.no_grad()
def test_evit_in_a_real_block():
    model = tiny_model(seed=4)
    imgs = images(2, 20)
    gen = model.stages(imgs, frozenset({"cls_attn"}))
    point = gen.send(None)  # block 2
    attn = _explicit_cls_attention(model, imgs, point.block)
    torch.testing.assert_close(point.extras.cls_attn.double(), attn, atol=1e-6, rtol=1e-5)
    k = 45
    out = create_reducer("evit")(point, k)
    for b in range(2):
        scores = attn[b, 1:].tolist()
        ranked = sorted(scores, reverse=True)
        assert ranked[k - 1] - ranked[k] > 1e-6  # no near-tie at the boundary
        kept = ref_topk(scores, k)
        assert out.ids[b, :k].tolist() == kept
        fused = ref_fused(point.state.patches[b], attn[b, 1:], kept)
        torch.testing.assert_close(out.patches[b, k].double(), fused, atol=1e-5, rtol=1e-4)
