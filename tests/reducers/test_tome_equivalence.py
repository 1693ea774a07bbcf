"""ToMe (Bolya et al. 2023) against a loop re-derivation of bipartite soft matching.

One round: patch tokens alternate into A (even positions) and B (odd); every A token finds its most
cosine-similar B token on the head-averaged keys; the r A tokens with the best such similarity merge
into their partners by a size-weighted average, and sizes add. CLS never merges.
"""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import Spy, images, point_from_state, synthetic_point, tiny_model

from simprune.drive import forward_reduced
from simprune.reducers import create_reducer


def ref_bipartite_round(metric, values, sizes, r):
    """One round by loops. metric: [N, d]; values: [N, D]; sizes: list of N floats.

    Returns (kept positions, merged values [N-r, D], new sizes, dst: old position -> new position).
    """
    n = metric.shape[0]
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))

    def cos(u, v):
        return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))

    best = {}
    for a in a_pos:
        sims = [cos(metric[a], metric[b]) for b in b_pos]
        j = max(range(len(sims)), key=lambda i: (sims[i], -i))
        best[a] = (sims[j], b_pos[j])
    order = sorted(a_pos, key=lambda a: -best[a][0])
    merged = set(order[:r])
    kept = [i for i in range(n) if i not in merged]
    new_vals, new_sizes = [], []
    for pos in kept:
        members = [pos] + [a for a in merged if best[a][1] == pos]
        total = sum(sizes[m] for m in members)
        new_vals.append(sum(sizes[m] * values[m].double() for m in members) / total)
        new_sizes.append(total)
    dst = {i: kept.index(i) if i in kept else kept.index(best[i][1]) for i in range(n)}
    return kept, torch.stack(new_vals), new_sizes, dst, order


def _point(n, b=2, d=6, heads=2, hd=4, seed=0, sizes=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1 + n, d, generator=g)
    k = torch.randn(b, heads, 1 + n, hd, generator=g)
    size = None
    if sizes is not None:
        size = torch.cat([torch.ones(b, 1), sizes], dim=1)
    return synthetic_point(x, k=k, size=size), x, k


@pytest.mark.parametrize("n, r", [(12, 3), (12, 6), (11, 4), (11, 6), (2, 1), (3, 2)])
def test_one_round_matches_loop(n, r):
    point, x, keys = _point(n, seed=n + r)
    out = create_reducer("tome")(point, n - r)
    assert out.num_patches == n - r
    for b in range(2):
        metric = keys[b, :, 1:].double().mean(0)
        kept, vals, sizes, dst, order = ref_bipartite_round(metric, x[b, 1:], [1.0] * n, r)
        assert out.ids[b].tolist() == kept
        torch.testing.assert_close(out.patches[b].double(), vals, atol=1e-6, rtol=1e-5)
        assert out.size[b].tolist() == [1.0, *sizes]
        assert out.source[b].tolist() == [dst[i] for i in range(n)]
        assert torch.equal(out.x[b, 0], x[b, 0])


def test_sizes_weight_the_average():
    n, r = 10, 4
    g = torch.Generator().manual_seed(5)
    sizes = torch.randint(1, 5, (2, n), generator=g).float()
    point, x, keys = _point(n, seed=7, sizes=sizes)
    out = create_reducer("tome")(point, n - r)
    for b in range(2):
        metric = keys[b, :, 1:].double().mean(0)
        kept, vals, new_sizes, _, _ = ref_bipartite_round(metric, x[b, 1:], sizes[b].tolist(), r)
        torch.testing.assert_close(out.patches[b].double(), vals, atol=1e-6, rtol=1e-5)
        assert out.size[b, 1:].tolist() == new_sizes
        assert out.size[b, 1:].sum().item() == sizes[b].sum().item()


@pytest.mark.parametrize("n, k", [(64, 13), (64, 1), (20, 3), (9, 2)])
def test_many_rounds_preserve_mass(n, k):
    """N - K > N/2 needs several rounds; every output is the mean of the originals it holds."""
    point, x, _ = _point(n, b=3, seed=n * k)
    out = create_reducer("tome")(point, k)
    assert out.num_patches == k and out.size.shape == (3, 1 + k)
    for b in range(3):
        assert out.size[b, 0].item() == 1.0
        assert out.size[b, 1:].sum().item() == n
        src = out.source[b].tolist()
        assert min(src) >= 0  # merging loses no original token
        for j in range(k):
            members = [i for i in range(n) if src[i] == j]
            assert len(members) == out.size[b, 1 + j].item()
            torch.testing.assert_close(out.patches[b, j], x[b, 1:][members].mean(0), atol=1e-5,
                                       rtol=1e-5)
            assert src[out.ids[b, j].item()] == j  # the id of a token is one of its members


def test_second_point_continues_from_sizes():
    point, x, _ = _point(16, b=1, seed=11)
    first = create_reducer("tome")(point, 10)
    g = torch.Generator().manual_seed(12)
    second = create_reducer("tome")(point_from_state(first, k=torch.randn(1, 2, 11, 4, generator=g)), 5)
    assert second.size[0, 1:].sum().item() == 16
    src = second.source[0].tolist()
    for j in range(5):
        members = [i for i in range(16) if src[i] == j]
        torch.testing.assert_close(second.patches[0, j], x[0, 1:][members].mean(0), atol=1e-5,
                                   rtol=1e-5)


@torch.no_grad()
def test_model_sizes_sum_and_proportional_attention():
    model = tiny_model(seed=2, reduce_at=(1, 2, 3))
    spy = Spy(create_reducer("tome"))
    res = forward_reduced(model, images(2, 21), spy, 0.4)
    assert [c["n"] for c in spy.calls] == [64, 26, 10]
    final = res.state
    assert final.num_patches == 4
    assert torch.equal(final.size.sum(1), torch.full((2,), 65.0))
    for b in range(2):
        counts = torch.bincount(final.source[b], minlength=4).float()
        assert torch.equal(counts, final.size[b, 1:])
    # the block after a merge attends with log(size): reproduce point 2 from point 1's output
    reduced = spy.calls[0]["out"]
    after_mlp = model.blocks[0].feed_forward(reduced)
    blk = model.blocks[1]
    attn_out, _ = blk.attn(blk.norm1(after_mlp.x), size=after_mlp.size)
    torch.testing.assert_close(spy.calls[1]["x"], after_mlp.x + attn_out, atol=1e-5, rtol=1e-5)
    plain, _ = blk.attn(blk.norm1(after_mlp.x))
    assert not torch.allclose(spy.calls[1]["x"], after_mlp.x + plain, atol=1e-4)
