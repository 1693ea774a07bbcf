"""Deterministic ties in the one-branch selections: equal scores keep the lowest positions.

``torch.topk`` promises no order among equal values (on CPU it keeps other tied positions than the
lowest for these sizes). EViT / ``attn_topk`` token selection, ``mean_sim`` and the connection
selector rank by a stable sort instead; without ties the kept set is exactly ``topk``'s.
"""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import synthetic_point

from simprune.reducers import create_reducer
from simprune.reducers.attn_topk import connection_mask
from simprune.reducers.evit import top_positions, topk_keep
from simprune.reducers.mean_sim import mean_sim_keep, mean_similarity


@pytest.mark.parametrize("n", [6, 64, 196])
def test_topk_keep_all_equal_keeps_first_positions(n):
    k = math.ceil(0.7 * n)
    assert topk_keep(torch.zeros(3, n), k).tolist() == [list(range(k))] * 3


def test_topk_keep_partly_equal():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.9, 0.1],
                           [0.2, 0.2, 0.7, 0.2, 0.7, 0.7]])
    assert topk_keep(scores, 3).tolist() == [[0, 1, 4], [2, 4, 5]]
    assert topk_keep(scores, 4).tolist() == [[0, 1, 2, 4], [0, 2, 4, 5]]
    assert top_positions(scores, 4).tolist() == [[1, 4, 0, 2], [2, 4, 5, 0]]


@pytest.mark.parametrize("seed", range(3))
def test_topk_keep_unchanged_without_ties(seed):
    scores = torch.rand(128, 197, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert scores.unique().numel() == scores.numel()
    for k in (1, 45, 138, 197):
        want = scores.topk(k, dim=1).indices.sort(dim=1).values
        assert torch.equal(topk_keep(scores, k), want)


@pytest.mark.parametrize("name", ["evit", "evit_nofuse", "attn_topk"])
def test_cls_attention_reducers_keep_lowest_positions_on_ties(name):
    n, d, k = 10, 4, 4
    x = torch.randn(2, 1 + n, d, generator=torch.Generator().manual_seed(0))
    attn = torch.full((2, 1 + n), 0.05)
    attn[1, 1 + 7] = 0.3  # row 1: one clear winner, the rest tied
    q = kk = torch.zeros(2, 2, 1 + n, 2)
    out = create_reducer(name)(synthetic_point(x, cls_attn=attn, q=q, k=kk), k)
    ids = out.ids[:, :k].tolist()
    assert ids == [[0, 1, 2, 3], [0, 1, 2, 7]]


def test_mean_sim_ties_keep_lowest_positions():
    # all tokens equal: every similarity is 1
    x = torch.ones(2, 9, 3)
    assert mean_sim_keep(x, 4).tolist() == [[0, 1, 2, 3]] * 2
    # two distinct directions, duplicated: positions 1, 3, 5 are copies of the rarer direction
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    rows = [a, b, a, b, a, b, a, a]  # b is rarer -> less similar to the mean -> kept first
    x = torch.stack(rows)[None]
    assert mean_sim_keep(x, 2).tolist() == [[1, 3]]
    assert mean_sim_keep(x, 4).tolist() == [[0, 1, 3, 5]]
    reducer_ids = create_reducer("mean_sim")(synthetic_point(torch.cat([x[:, :1], x], 1)), 4).ids
    assert reducer_ids.tolist() == [[0, 1, 3, 5]]


def test_mean_sim_unchanged_without_ties():
    x = torch.randn(64, 65, 8, generator=torch.Generator().manual_seed(1))
    sim = mean_similarity(x)
    assert sim.unique().numel() == sim.numel()
    for k in (1, 20, 46):
        assert torch.equal(mean_sim_keep(x, k), (-sim).topk(k, dim=1).indices.sort(dim=1).values)


def test_connection_mask_ties_keep_lowest_keys():
    b, h, m, hd = 2, 2, 7, 4
    q = torch.zeros(b, h, m, hd)  # zero queries: uniform attention, every key tied
    k = torch.randn(b, h, m, hd, generator=torch.Generator().manual_seed(0))
    seq = torch.arange(m).expand(b, m)
    mask = connection_mask(q, k, seq, 3, prefix=1)
    assert mask[:, 0].all()  # the prefix row stays dense
    want = torch.zeros(m, dtype=torch.bool)
    want[:3] = True
    assert torch.equal(mask[:, 1:], want.expand(b, m - 1, m))


def test_top_positions_partly_equal_3d():
    attn = torch.tensor([[[0.1, 0.3, 0.3, 0.3], [0.4, 0.4, 0.1, 0.1]]])
    assert top_positions(attn, 2).tolist() == [[[1, 2], [0, 1]]]
    assert top_positions(attn, 3).tolist() == [[[1, 2, 3], [0, 1, 2]]]


@pytest.mark.parametrize("k", [0, 1, 5, 12, 16])
def test_top_mask_keeps_the_stable_sort_set(k):
    """The connection selector's sort-free top-k keeps the same set as a stable descending sort,
    ties at the cut lowest position first (integer scores: many ties)."""
    from simprune.reducers.attn_topk import top_mask

    scores = torch.randint(0, 4, (3, 7, 16), generator=torch.Generator().manual_seed(k)).float()
    mask = top_mask(scores, k)
    assert mask.sum(-1).eq(k).all()
    want = torch.zeros_like(mask)
    if k:
        want.scatter_(-1, top_positions(scores, k), True)
    assert torch.equal(mask, want)
