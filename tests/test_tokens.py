"""Token bookkeeping: ids, source, sizes and masks through keeps, merges and appended tokens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simprune.tokens import (
    TokenState,
    append_patch,
    check_keep_rate,
    gather_patches,
    initial_state,
    invert_keep,
    num_keep,
)


def _state(b=2, n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return initial_state(torch.randn(b, 1 + n, d, generator=g))


def test_initial_state():
    s = _state(b=2, n=5)
    assert s.num_patches == 5 and s.num_prefix == 1
    assert torch.equal(s.ids, torch.arange(5).expand(2, 5))
    assert torch.equal(s.source, torch.arange(5).expand(2, 5))
    assert s.size is None and s.attn_mask is None
    assert torch.equal(s.prefix, s.x[:, :1]) and torch.equal(s.patches, s.x[:, 1:])
    x2 = torch.zeros_like(s.x)
    s2 = s.with_x(x2)
    assert s2.x is x2 and s2.ids is s.ids


def test_initial_state_two_prefix_tokens():
    s = initial_state(torch.randn(1, 2 + 4, 3), num_prefix=2)
    assert s.num_patches == 4 and s.prefix.shape == (1, 2, 3)
    assert torch.equal(s.ids[0], torch.arange(4))


def test_invert_keep_loop():
    keep = torch.tensor([[4, 0, 2], [1, 3, 5]])
    inv = invert_keep(keep, 6)
    for b in range(2):
        for old in range(6):
            hits = [new for new, k in enumerate(keep[b].tolist()) if k == old]
            assert inv[b, old].item() == (hits[0] if hits else -1)


def test_gather_patches_values_ids_source():
    s = _state(b=2, n=6, d=3)
    keep = torch.tensor([[1, 4, 5], [0, 2, 3]])
    out = gather_patches(s, keep)
    assert out.num_patches == 3
    assert torch.equal(out.x[:, 0], s.x[:, 0])
    for b in range(2):
        for j, pos in enumerate(keep[b].tolist()):
            assert torch.equal(out.patches[b, j], s.patches[b, pos])
            assert out.ids[b, j].item() == pos
        for orig in range(6):
            expected = keep[b].tolist().index(orig) if orig in keep[b].tolist() else -1
            assert out.source[b, orig].item() == expected
    assert out.size is None and out.attn_mask is None


def test_gather_twice_keeps_original_indices():
    s = _state(b=1, n=8)
    first = gather_patches(s, torch.tensor([[1, 3, 4, 6, 7]]))
    second = gather_patches(first, torch.tensor([[0, 3, 4]]))
    assert second.ids.tolist() == [[1, 6, 7]]
    assert second.source.tolist() == [[-1, 0, -1, -1, -1, -1, 1, 2]]
    assert torch.equal(second.patches[0], s.patches[0, [1, 6, 7]])


def test_gather_sizes_and_mask():
    s = _state(b=1, n=4)
    s.size = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    s.attn_mask = torch.rand(1, 5, 5) > 0.5
    keep = torch.tensor([[3, 1]])
    out = gather_patches(s, keep)
    assert out.size.tolist() == [[1.0, 5.0, 3.0]]
    seq = [0, 4, 2]  # CLS, then the kept patches in output order (+1 for the prefix)
    for i, qi in enumerate(seq):
        for j, kj in enumerate(seq):
            assert out.attn_mask[0, i, j] == s.attn_mask[0, qi, kj]


def test_gather_with_merged_values_and_mapping():
    s = _state(b=1, n=4)
    merged = torch.full_like(s.patches, 7.0)
    old_to_new = torch.tensor([[0, 0, 1, 1]])  # tokens 0,1 -> new 0; 2,3 -> new 1
    out = gather_patches(s, torch.tensor([[1, 3]]), x_patches=merged, old_to_new=old_to_new,
                         size_patches=torch.tensor([[0.0, 2.0, 0.0, 2.0]]))
    assert torch.equal(out.patches, torch.full((1, 2, 3), 7.0))
    assert out.source.tolist() == [[0, 0, 1, 1]]
    assert out.size.tolist() == [[1.0, 2.0, 2.0]]
    assert out.ids.tolist() == [[1, 3]]


def test_append_patch():
    s = _state(b=2, n=5)
    s.size = torch.ones(2, 6)
    s.attn_mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    kept = gather_patches(s, torch.tensor([[0, 2], [1, 4]]))
    token = torch.randn(2, 1, 3)
    absorbed = (kept.source < 0) & (s.source >= 0)
    out = append_patch(kept, token, absorbed)
    assert out.num_patches == 3
    assert out.ids.tolist() == [[0, 2, -1], [1, 4, -1]]
    assert out.source.tolist() == [[0, 2, 1, 2, 2], [2, 0, 2, 2, 1]]
    assert torch.equal(out.x[:, -1:], token)
    assert out.size.shape == (2, 4) and torch.all(out.size == 1)
    assert out.attn_mask.shape == (2, 4, 4)
    assert torch.all(out.attn_mask[:, -1]) and torch.all(out.attn_mask[:, :, -1])
    assert not out.attn_mask[:, :3, :3].any()


@given(
    n=st.integers(2, 24),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_ids_and_source_stay_consistent(n, data):
    """After any chain of keeps, ids and source are inverse maps of each other."""
    state = initial_state(torch.arange(1.0 + n).reshape(1, 1 + n, 1).expand(2, -1, -1).clone())
    alive = [list(range(n)), list(range(n))]
    for _ in range(data.draw(st.integers(1, 3))):
        cur = state.num_patches
        k = data.draw(st.integers(1, cur))
        keeps = [data.draw(st.permutations(range(cur)))[:k] for _ in range(2)]
        state = gather_patches(state, torch.tensor(keeps))
        alive = [[alive[b][p] for p in keeps[b]] for b in range(2)]
    for b in range(2):
        assert state.ids[b].tolist() == alive[b]
        # values: patch value = 1 + original index (CLS is 0)
        assert state.patches[b, :, 0].tolist() == [1.0 + i for i in alive[b]]
        for orig in range(n):
            pos = state.source[b, orig].item()
            if orig in alive[b]:
                assert pos == alive[b].index(orig)
            else:
                assert pos == -1
        assert state.x[b, 0, 0].item() == 0.0


@pytest.mark.parametrize(
    "n, rate, k",
    [(64, 0.7, 45), (64, 0.8, 51), (50, 0.7, 35), (10, 0.5, 5), (10, 1.0, 10), (3, 0.1, 1), (1, 0.01, 1),
     # halves round up on the decimal product: 0.7·45 = 31.5 (31.4999… in binary floats), 0.5·5 = 2.5
     (45, 0.7, 32), (5, 0.5, 3), (196, 0.8, 157)],
)
def test_num_keep(n, rate, k):
    assert num_keep(n, rate) == k


@pytest.mark.parametrize("rate", [0, 0.0, 1.5, -0.1, 1.0000001, float("nan"), "0.5", None])
def test_bad_keep_rate_names_value_and_range(rate):
    with pytest.raises(ValueError) as err:
        num_keep(10, rate)
    msg = str(err.value)
    assert repr(rate) in msg and "(0, 1]" in msg


def test_check_keep_rate_uses_given_name():
    with pytest.raises(ValueError, match=r"attn_keep must be in \(0, 1\], got 2"):
        check_keep_rate(2, "attn_keep")
    check_keep_rate(1)
    check_keep_rate(1e-6)


def test_token_state_is_a_dataclass_with_defaults():
    x = torch.zeros(1, 3, 2)
    s = TokenState(x, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    assert s.num_prefix == 1 and s.num_patches == 2
