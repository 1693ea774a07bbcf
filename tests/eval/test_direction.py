"""The shared-direction measures against a loop over pairs and against cases known by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from simprune.eval.direction import mean_energy_share, mean_pairwise_cosine


def test_mean_pairwise_cosine_equals_a_loop_over_pairs():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(7, 5, generator=g, dtype=torch.float64) + 2.0
    want = [torch.nn.functional.cosine_similarity(f[i], f[j], dim=0).item()
            for i, j in itertools.permutations(range(7), 2)]
    assert mean_pairwise_cosine(f) == pytest.approx(sum(want) / len(want), abs=1e-12)


def test_known_cases():
    same = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])  # one direction, different norms
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(opposite) == pytest.approx(-1.0)
    assert mean_energy_share(opposite) == 0.0  # centred
    assert mean_energy_share(torch.ones(4, 3)) == pytest.approx(1.0)
    # a common offset of norm 3 plus orthogonal unit parts: share 9 / (9 + 1)
    f = torch.cat([torch.full((4, 1), 3.0), torch.eye(4)], dim=1)
    f[:, 1:] -= f[:, 1:].mean(dim=0)  # centre the unit parts
    share = 9.0 / (9.0 + float(f[0, 1:].pow(2).sum()))
    assert mean_energy_share(f) == pytest.approx(share)
    assert not math.isnan(mean_pairwise_cosine(f))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"feats must be \[N, D\] with N >= 2, got shape \(1, 3\)"):
        mean_pairwise_cosine(torch.ones(1, 3))
    with pytest.raises(ValueError, match="got shape"):
        mean_energy_share(torch.ones(3))
