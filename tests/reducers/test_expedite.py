"""Expediting ViT (``expedite``): one clustering round equals a loop re-derivation, reconstruction
restores every token, a constant image clusters to constant centres, the FLOP count sees the
iterations, and plans it cannot run are refused with both values named."""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import images, synthetic_point, tiny_model

from simprune.bench.flops_count import count_flops
from simprune.drive import forward_reduced
from simprune.reducers import create_reducer
from simprune.reducers.expedite import cluster_layout


def loop_round(x, cells, k, radius, tau):
    """One soft k-means round from the cells' average pool, token by token (x: [N, D] on an 8x8
    grid; cells: (cell rows, cell cols) of a regular grid)."""
    ch, cw = cells
    sh, sw = 8 // ch, 8 // cw
    cell_of = [(i // 8) // sh * cw + (i % 8) // sw for i in range(64)]
    centres = []
    for c in range(k):
        members = [x[i] for i in range(64) if cell_of[i] == c]
        centres.append(sum(members) / len(members))
    num = [torch.zeros_like(x[0]) for _ in range(k)]
    den = [0.0] * k
    for i in range(64):
        ti, tj = divmod(cell_of[i], cw)
        logits = {}
        for c in range(k):
            ci, cj = divmod(c, cw)
            if abs(ti - ci) <= radius and abs(tj - cj) <= radius:
                logits[c] = -float(((x[i] - centres[c]) ** 2).sum()) / tau
        m = max(logits.values())
        z = sum(math.exp(v - m) for v in logits.values())
        for c, v in logits.items():
            a = math.exp(v - m) / z
            num[c] = num[c] + a * x[i]
            den[c] += a
    return torch.stack([num[c] / den[c] for c in range(k)])


@pytest.mark.parametrize("k, cells, window", [(16, (4, 4), 3), (16, (4, 4), 5), (4, (2, 2), 1)])
def test_one_round_equals_loop(k, cells, window):
    x = torch.randn(2, 65, 6, generator=torch.Generator().manual_seed(k + window), dtype=torch.float64)
    red = create_reducer("expedite", n_iters=1, window=window, tau=4.0)
    out = red(synthetic_point(x.float()), k)
    assert cluster_layout(k, (8, 8)) == (cells[1],) * cells[0]
    for b in range(2):
        want = loop_round(x[b, 1:], cells, k, window // 2, 4.0)
        torch.testing.assert_close(out.patches[b].double(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.x[:, 0], x[:, 0].float())  # CLS is never clustered


def test_reconstruction_restores_every_token():
    model = tiny_model()
    red = create_reducer("expedite", recon_at=3)
    red.check_plan((2, 3), 64)
    res = forward_reduced(model, images(3, 1), red, 0.5)
    assert [(p.block, p.tokens_in, p.tokens_out) for p in res.points] == [(2, 64, 32), (3, 32, 64)]
    assert res.state.num_patches == 64
    assert torch.equal(res.state.ids, torch.arange(64).expand(3, 64))
    assert torch.equal(res.state.source, torch.arange(64).expand(3, 64))
    assert torch.isfinite(res.state.x).all()
    res.state.patches.pow(2).mean().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_constant_image_clusters_to_constant_centres():
    v = torch.randn(8)
    x = torch.cat([torch.randn(2, 1, 8), v.expand(2, 64, 8)], dim=1)
    for k in (16, 45, 7):
        out = create_reducer("expedite")(synthetic_point(x), k)
        assert out.num_patches == k
        torch.testing.assert_close(out.patches, v.expand(2, k, 8), atol=1e-5, rtol=1e-5)


def test_layouts_are_exact_and_close_to_square():
    assert cluster_layout(36, (8, 8)) == (6,) * 6
    assert cluster_layout(32, (8, 8)) == (8,) * 4
    assert sum(cluster_layout(45, (8, 8))) == 45 and len(cluster_layout(45, (8, 8))) == 7
    assert sum(cluster_layout(29, (8, 8))) == 29


def test_flops_count_the_clustering_iterations():
    x = torch.randn(2, 65, 8)
    flops = {n: count_flops(lambda n=n: create_reducer("expedite", n_iters=n)(synthetic_point(x), 16))
             for n in (1, 5)}
    b, n, k, d = 2, 64, 16, 8
    assert flops[5] - flops[1] == 4 * 2 * (2 * b * n * k * d)  # 4 rounds × 2 products × 2·MACs
    assert flops[1] == (2 + 2 * 1) * 2 * b * n * k * d  # initial pool, 1 round, final distances


@pytest.mark.parametrize("options, reduce_at, match", [
    ({"clusters": 80}, (4,), r"clusters K = 80 is larger than the 64 patch tokens"),
    ({"recon_at": 4}, (4, 7), r"recon_at = 4 must come after the clustering block 7"),
    ({"recon_at": 9}, (4, 7), r"recon_at = 9 must be one of reducer.reduce_at \[4, 7\]"),
])
def test_bad_plans_name_both_values(options, reduce_at, match):
    with pytest.raises(ValueError, match=match):
        create_reducer("expedite", **options).check_plan(reduce_at, 64)
