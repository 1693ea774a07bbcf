"""InfoNCE against a per-row log-softmax re-derivation in float64 Python.

MoCo v3 (Chen et al. 2021): ``L = 2T · mean_i −log( exp(q_i·k_{p(i)} / T) / Σ_j exp(q_i·k_j / T) )``
with ``q``, ``k`` L2-normalised, ``j`` over the keys of every process and ``p(i) = rank·B + i``.
"""

from __future__ import annotations

import math

import pytest
import torch

from simprune.losses import info_nce, info_nce_per_sample


def ref_normalise(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def ref_info_nce_rows(q: list, k_all: list, temp: float, offset: int) -> list[float]:
    keys = [ref_normalise(k) for k in k_all]
    out = []
    for i, qi in enumerate(q):
        qn = ref_normalise(qi)
        logits = [sum(a * b for a, b in zip(qn, k)) / temp for k in keys]
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(z - top) for z in logits))
        out.append(-(logits[offset + i] - log_norm) * 2 * temp)
    return out


def _qk(b=4, world=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), 3 * torch.randn(world * b, d, generator=g)


@pytest.mark.parametrize(("world", "rank"), [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_matches_row_loop(world, rank):
    b = 4
    q, k_all = _qk(b, world)
    ref = ref_info_nce_rows(q.double().tolist(), k_all.double().tolist(), 0.2, rank * b)
    per_row = info_nce_per_sample(q, k_all, 0.2, offset=rank * b)
    assert per_row.shape == (b,)
    assert per_row.tolist() == pytest.approx(ref, rel=1e-5)
    assert float(info_nce(q, k_all, 0.2, offset=rank * b)) == pytest.approx(sum(ref) / b, rel=1e-5)


def test_rank_one_of_two_uses_its_own_positives():
    """Rank 1's positives are keys B..2B−1: putting the queries' own keys there gives a low loss,
    and the same keys read with offset 0 (rank 0's positives) give a high one."""
    b = 5
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, 16, generator=g)
    others = torch.randn(b, 16, generator=g)
    k_all = torch.cat([others, q + 0.01 * torch.randn(b, 16, generator=g)])
    right = float(info_nce(q, k_all, 0.2, offset=b))
    wrong = float(info_nce(q, k_all, 0.2, offset=0))
    assert right < 0.2 < wrong


def test_scale_is_two_t():
    """The 2T factor: the loss equals 2T times the plain cross-entropy of the cosine logits / T."""
    q, k_all = _qk(seed=2)
    for temp in (0.1, 0.2, 1.0):
        logits = torch.nn.functional.normalize(q.double(), dim=1) @ \
            torch.nn.functional.normalize(k_all.double(), dim=1).t() / temp
        ce = torch.nn.functional.cross_entropy(logits, torch.arange(4) + 4)
        got = info_nce(q.double(), k_all.double(), temp, offset=4)
        assert float(got) == pytest.approx(2 * temp * float(ce), rel=1e-6)


def test_float64_tight_and_per_sample_mean():
    q, k_all = _qk(seed=3)
    ref = ref_info_nce_rows(q.double().tolist(), k_all.double().tolist(), 0.2, 4)
    per_row = info_nce_per_sample(q.double(), k_all.double(), 0.2, offset=4)
    # .float() inside the loss casts to float32, so float64 inputs meet float32 precision
    assert per_row.tolist() == pytest.approx(ref, rel=1e-5)
    scalar = info_nce(q, k_all, 0.2, offset=4)
    torch.testing.assert_close(info_nce_per_sample(q, k_all, 0.2, offset=4).mean(), scalar,
                               rtol=1e-6, atol=0)


def test_invariant_to_the_scale_of_q_and_k():
    q, k_all = _qk(seed=4)
    torch.testing.assert_close(info_nce(q, k_all, 0.2), info_nce(7 * q, 0.5 * k_all, 0.2),
                               rtol=1e-5, atol=1e-6)


def test_gradient_flows_to_q_only():
    q, k_all = _qk(seed=5)
    q.requires_grad_(True)
    info_nce(q, k_all, 0.2, offset=4).backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize("offset", [-1, 5, 8])
def test_offsets_outside_the_keys_are_named(offset):
    q, k_all = _qk(b=4, world=2)
    with pytest.raises(ValueError, match="valid offsets are 0..4"):
        info_nce(q, k_all, 0.2, offset=offset)


def test_mismatched_dims_are_named():
    with pytest.raises(ValueError, match="k_all"):
        info_nce_per_sample(torch.zeros(2, 4), torch.zeros(4, 5), 0.2)
