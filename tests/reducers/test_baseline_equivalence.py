"""mean_sim (PCAE), random, and Tri-Level E-ViT's attention-connection selector, by loops."""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import Spy, images, softmax_rows, synthetic_point, tiny_model

from simprune.drive import forward_reduced
from simprune.reducers import create_reducer


def _cos(u, v):
    return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))


@pytest.mark.parametrize("k", [1, 5, 14])
def test_mean_sim_matches_loop(k):
    """PCAE drops the tokens most similar to the mean patch token; K least similar stay."""
    g = torch.Generator().manual_seed(k)
    n, d = 15, 6
    x = torch.randn(2, 1 + n, d, generator=g)
    x[:, 1:] += 0.8  # a common component, so the mean is informative
    out = create_reducer("mean_sim")(synthetic_point(x), k)
    for b in range(2):
        patches = x[b, 1:].double()
        mean = sum(patches[i] for i in range(n)) / n
        sims = [_cos(patches[i], mean) for i in range(n)]
        kept = sorted(sorted(range(n), key=lambda i: sims[i])[:k])
        assert out.ids[b].tolist() == kept
        assert torch.equal(out.patches[b], x[b, 1:][kept])
        assert torch.equal(out.x[b, 0], x[b, 0])


def test_mean_sim_ignores_cls():
    x = torch.zeros(1, 5, 2)
    x[0, 1:] = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, -0.05]])
    x[0, 0] = torch.tensor([0.0, 100.0])  # would dominate the mean if it were counted
    out = create_reducer("mean_sim")(synthetic_point(x), 1)
    assert out.ids.tolist() == [[2]]


def test_random_keeps_k_distinct_and_follows_the_seed():
    x = torch.randn(4, 1 + 30, 3)
    red = create_reducer("random")
    torch.manual_seed(0)
    a = red(synthetic_point(x), 9)
    torch.manual_seed(0)
    b = red(synthetic_point(x), 9)
    torch.manual_seed(1)
    c = red(synthetic_point(x), 9)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.x, b.x)
    assert not torch.equal(a.ids, c.ids)
    for row in a.ids.tolist():
        assert len(set(row)) == 9 and all(0 <= i < 30 for i in row)
        assert row == sorted(row)
    assert len({tuple(r) for r in a.ids.tolist()}) > 1  # drawn per sample
    for bi in range(4):
        assert torch.equal(a.patches[bi], x[bi, 1:][a.ids[bi]])


def test_random_covers_every_position():
    x = torch.randn(1, 1 + 12, 2)
    counts = torch.zeros(12)
    torch.manual_seed(3)
    for _ in range(300):
        counts[create_reducer("random")(synthetic_point(x), 3).ids[0]] += 1
    assert counts.min() > 30 and counts.max() < 130  # expectation 75 each


def ref_connection_rows(q, k, seq, keys_per_row):
    """For each query in ``seq`` (kept positions, CLS first): the CLS key (always) and its top
    ``keys_per_row - 1`` patch keys among ``seq`` by the head-averaged softmax over the kept keys.
    q, k: [H, n, hd]."""
    heads, _, hd = q.shape
    rows = []
    for qi in seq:
        avg = [0.0] * len(seq)
        for h in range(heads):
            logits = [float(q[h, qi] @ k[h, kj]) / math.sqrt(hd) for kj in seq]
            m = max(logits)
            e = [math.exp(v - m) for v in logits]
            for j in range(len(seq)):
                avg[j] += e[j] / sum(e) / heads
        top = sorted(range(1, len(seq)), key=lambda j: -avg[j])[:keys_per_row - 1]
        rows.append(sorted([0, *top]))
    return rows


@pytest.mark.parametrize("attn_keep, k", [(0.5, 6), (0.3, 9), (0.9, 4), (0.01, 5)])
def test_attention_connection_mask_matches_loop(attn_keep, k):
    g = torch.Generator().manual_seed(int(attn_keep * 100) + k)
    b, n, heads, hd = 2, 12, 2, 4
    x = torch.randn(b, 1 + n, 8, generator=g)
    attn = softmax_rows(2 * torch.randn(b, 1 + n, generator=g))
    q = torch.randn(b, heads, 1 + n, hd, generator=g)
    kk = torch.randn(b, heads, 1 + n, hd, generator=g)
    out = create_reducer("attn_topk", attn_keep=attn_keep)(synthetic_point(x, attn, q, kk), k)
    per_row = max(1, math.ceil(round(attn_keep * (1 + k), 9)))  # 0.3 * 10 is 3 keys, not 4
    assert out.attn_mask.shape == (b, 1 + k, 1 + k)
    for bi in range(b):
        kept = sorted(sorted(range(n), key=lambda i: -float(attn[bi, 1 + i]))[:k])
        assert out.ids[bi].tolist() == kept
        assert out.attn_mask[bi, 0].all() and out.attn_mask[bi, :, 0].all()  # CLS row and column
        assert out.attn_mask[bi, 1:].sum(1).tolist() == [per_row] * k
        seq = [0] + [1 + i for i in kept]
        expected = ref_connection_rows(q[bi], kk[bi], seq, per_row)
        for row in range(1, 1 + k):
            assert torch.nonzero(out.attn_mask[bi, row]).flatten().tolist() == expected[row]


@torch.no_grad()
def test_connection_mask_acts_in_later_blocks_and_is_recomputed():
    model = tiny_model(seed=3)
    spy = Spy(create_reducer("attn_topk", attn_keep=0.5))
    res = forward_reduced(model, images(2, 30), spy, 0.7)
    first, second = spy.calls[0]["out"], spy.calls[1]["out"]
    assert first.attn_mask.shape == (2, 46, 46)
    assert first.attn_mask[:, 1:].sum(-1).eq(math.ceil(0.5 * 46)).all()
    # 45 patches at 0.7: 31.5 rounds half up to 32 kept, plus CLS
    assert second.attn_mask.shape == (2, 33, 33)
    assert second.attn_mask[:, 1:].sum(-1).eq(math.ceil(0.5 * 33)).all()
    assert res.state.attn_mask is not None and torch.equal(res.state.attn_mask, second.attn_mask)
    # point 2 = MLP of block 2 on the reduced tokens, then block 3's attention under the mask
    after = model.blocks[1].feed_forward(first)
    blk = model.blocks[2]
    masked, _ = blk.attn(blk.norm1(after.x), mask=after.attn_mask)
    torch.testing.assert_close(spy.calls[1]["x"], after.x + masked, atol=1e-5, rtol=1e-5)
    dense, _ = blk.attn(blk.norm1(after.x))
    assert not torch.allclose(spy.calls[1]["x"], after.x + dense, atol=1e-4)


def test_attn_keep_one_means_no_mask():
    x = torch.randn(1, 9, 4)
    attn = softmax_rows(torch.randn(1, 9))
    out = create_reducer("attn_topk", attn_keep=1.0)(synthetic_point(x, attn, x[:, None], x[:, None]), 3)
    assert out.attn_mask is None


@pytest.mark.parametrize("name", ["evit", "evit_nofuse", "attn_topk"])
def test_missing_cls_attention_is_explained(name):
    with pytest.raises(RuntimeError, match="cls_attn"):
        create_reducer(name)(synthetic_point(torch.randn(1, 5, 4)), 2)


def test_tome_without_keys_is_explained():
    with pytest.raises(RuntimeError, match="qk"):
        create_reducer("tome")(synthetic_point(torch.randn(1, 5, 4)), 2)
