"""MCTF (Lee et al. 2024) against a loop re-derivation of one fusion step from the paper's equations.

The re-derivation (double precision, plain loops): the attention each token receives,
``mean_{h,i} softmax_j(q_i·k_j/√d + log s_j)``; informativeness ``I = 1/received`` and the size
criterion ``1/s``, each over its per-image maximum (CLS included); the split of the whole sequence
into A (even indices, CLS at 0, never fused) and B (odd); score ``((cos+1)/2)^1 · (I_a I_b)^(1/20)
· (S_a S_b)^(1/40)``; ``r // 2`` A → best B fusions by the best score, then ``r − r // 2`` B → best
unfused A; each group's value ``Σ x ā s/s_max / Σ ā s/s_max`` and size ``Σ s``.
"""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import images, synthetic_point, tiny_model

from simprune.drive import forward_reduced
from simprune.reducers import create_reducer

EXPONENTS = (1.0, 1 / 20, 1 / 40)


def ref_received(q, k, sizes):
    """q, k: [H, T, hd] (T = 1 + N); sizes: T floats -> T floats."""
    h, t, hd = q.shape
    recv = [0.0] * t
    for head in range(h):
        for i in range(t):
            logits = [float(q[head, i] @ k[head, j]) / math.sqrt(hd) + math.log(sizes[j])
                      for j in range(t)]
            top = max(logits)
            e = [math.exp(v - top) for v in logits]
            z = sum(e)
            for j in range(t):
                recv[j] += e[j] / z / (h * t)
    return recv


def ref_fusion_step(x, recv, sizes, r, exps=EXPONENTS):
    """One MCTF step by loops over the whole sequence (index 0 = CLS).

    Returns (surviving sequence indices in order, their values, their sizes, index -> survivor).
    """
    t = x.shape[0]
    info = [1.0 / a for a in recv]
    info = [v / max(info) for v in info]
    inv_s = [1.0 / s for s in sizes]
    inv_s = [v / max(inv_s) for v in inv_s]

    def cos(u, v):
        return float(u @ v) / math.sqrt(float(u @ u) * float(v @ v))

    def score(a, b):
        return (((cos(x[a], x[b]) + 1) / 2) ** exps[0] * (info[a] * info[b]) ** exps[1]
                * (inv_s[a] * inv_s[b]) ** exps[2])

    a_set = [i for i in range(2, t, 2)]  # CLS (index 0) is in A but protected
    b_set = list(range(1, t, 2))
    r1, r2 = r // 2, r - r // 2
    best = {}
    for a in a_set:
        s = [score(a, b) for b in b_set]
        j = max(range(len(s)), key=lambda i: (s[i], -i))
        best[a] = (s[j], b_set[j])
    ranked = sorted(a_set, key=lambda a: -best[a][0])  # stable: lower index first on ties
    fused_a = ranked[:r1]
    unfused_a = [a for a in a_set if a not in fused_a]
    best_b = {}
    for b in b_set:
        s = [score(a, b) for a in unfused_a]
        j = max(range(len(s)), key=lambda i: (s[i], -i))
        best_b[b] = (s[j], unfused_a[j])
    fused_b = sorted(b_set, key=lambda b: -best_b[b][0])[:r2]
    dest = {i: i for i in range(t)}
    for b in fused_b:
        dest[b] = best_b[b][1]
    for a in fused_a:
        dest[a] = dest[best[a][1]]
    kept = [i for i in range(t) if dest[i] == i]
    s_max = max(sizes)
    vals, new_sizes = [], []
    for pos in kept:
        members = [m for m in range(t) if dest[m] == pos]
        w = [recv[m] * sizes[m] / s_max for m in members]
        vals.append(sum(wi * x[m].double() for wi, m in zip(w, members)) / sum(w))
        new_sizes.append(sum(sizes[m] for m in members))
    return kept, torch.stack(vals), new_sizes, dest


def _point(n, b=2, d=6, heads=2, hd=4, seed=0, sized=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1 + n, d, generator=g)
    q = torch.randn(b, heads, 1 + n, hd, generator=g)
    k = torch.randn(b, heads, 1 + n, hd, generator=g)
    size = None
    if sized:
        size = torch.cat([torch.ones(b, 1), torch.randint(1, 5, (b, n), generator=g).float()], 1)
    return synthetic_point(x, q=q, k=k, size=size), x, q, k, size


@pytest.mark.parametrize("n, r", [(12, 3), (12, 6), (11, 4), (11, 5), (2, 1), (3, 1), (9, 1)])
@pytest.mark.parametrize("sized", [True, False])
def test_one_step_matches_loop(n, r, sized):
    point, x, q, k, size = _point(n, seed=3 * n + r, sized=sized)
    out = create_reducer("mctf")(point, n - r)
    assert out.num_patches == n - r
    for b in range(2):
        sizes = size[b].tolist() if sized else [1.0] * (n + 1)
        recv = ref_received(q[b].double(), k[b].double(), sizes)
        kept, vals, new_sizes, dest = ref_fusion_step(x[b].double(), recv, sizes, r)
        assert kept[0] == 0, "CLS survives, first"
        assert out.ids[b].tolist() == [i - 1 for i in kept[1:]]
        torch.testing.assert_close(out.x[b].double(), vals, atol=1e-6, rtol=1e-5)
        assert out.size[b].tolist() == pytest.approx(new_sizes)
        assert out.source[b].tolist() == [kept.index(dest[i]) - 1 for i in range(1, n + 1)]
        assert torch.equal(out.x[b, 0], x[b, 0])


def test_each_criterion_changes_the_matching():
    """Leaving a criterion out (τ = 0) changes which tokens fuse on some input: all three count."""
    n, r = 16, 6
    base = [create_reducer("mctf")]
    changed = {"tau_info": 0, "tau_size": 0, "tau_sim": 0}
    seen = dict.fromkeys(changed, False)
    for seed in range(20):
        point, *_ = _point(n, seed=seed)
        ids = base[0](point, n - r).ids
        for key, value in changed.items():
            other = create_reducer("mctf", **{key: value})(point, n - r).ids
            seen[key] |= not torch.equal(ids, other)
    assert all(seen.values()), seen


def test_several_rounds_keep_every_patch_once():
    """Below N // 2 fusion runs in rounds: exact count, sizes add up to N, every patch held once."""
    n = 20
    point, *_ = _point(n, seed=11, sized=False)
    out = create_reducer("mctf")(point, 3)
    assert out.num_patches == 3
    assert out.size[:, 1:].sum(1).tolist() == [float(n)] * 2
    for b in range(2):
        held = out.source[b].tolist()
        assert all(0 <= p < 3 for p in held)
        for pos, orig in enumerate(out.ids[b].tolist()):
            assert held[orig] == pos


def test_gradients_flow_through_the_fused_tokens():
    point, x, *_ = _point(10, seed=2)
    x = x.clone().requires_grad_(True)
    point.state.x = x
    out = create_reducer("mctf")(point, 6)
    out.patches.sum().backward()
    assert x.grad is not None and x.grad[:, 1:].abs().sum(-1).gt(0).all(), "every patch contributes"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_with_proportional_attention_has_no_nan(dtype):
    model = tiny_model(seed=0)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        res = forward_reduced(model, images(4, seed=1), create_reducer("mctf"), [0.3, 0.5])
    assert [p.tokens_out for p in res.points] == [19, 10]
    assert res.state.size is not None and res.state.size[:, 1:].sum(1).tolist() == [64.0] * 4
    assert torch.isfinite(res.state.x).all()


def test_bad_option_names_the_valid_ones():
    with pytest.raises(ValueError, match="tau_info must be a number >= 0"):
        create_reducer("mctf", tau_info=-1)
    with pytest.raises(TypeError, match="valid: \\['tau_sim', 'tau_info', 'tau_size'\\]"):
        create_reducer("mctf", tau=1)
