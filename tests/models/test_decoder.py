"""The MAE decoder: one output per requested position, positions by original id, sizes, init."""

from __future__ import annotations

import pytest
import torch

from simprune.models.decoder import MAEDecoder, decoder_size
from simprune.models.init import sincos_pos_embed


def make(depth: int = 2, dim: int = 16, heads: int = 2, out: int = 12) -> MAEDecoder:
    torch.manual_seed(0)
    return MAEDecoder(embed_dim=24, grid=(8, 8), out_dim=out, dim=dim, depth=depth, num_heads=heads)


def test_one_output_per_target_position():
    dec = make()
    tokens = torch.randn(3, 1 + 5, 24)
    vis = torch.stack([torch.randperm(64)[:5] for _ in range(3)])
    for m in (1, 6, 59):
        tgt = torch.stack([torch.randperm(64)[:m] for _ in range(3)])
        assert dec(tokens, vis, tgt).shape == (3, m, 12)


def test_output_row_follows_its_target_id():
    """Permuting the targets permutes the outputs: row j is the prediction at target_ids[:, j]."""
    dec = make().eval()
    tokens = torch.randn(2, 1 + 4, 24)
    vis = torch.tensor([[0, 9, 20, 33], [1, 2, 3, 4]])
    tgt = torch.tensor([[5, 40, 63], [10, 11, 50]])
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        a = dec(tokens, vis, tgt)
        b = dec(tokens, vis, tgt[:, perm])
    torch.testing.assert_close(b, a[:, perm], atol=1e-5, rtol=1e-5)


def test_positions_are_fixed_sincos_by_original_id():
    dec = make()
    assert not any(n == "pos_embed" for n, _ in dec.named_parameters())
    assert "pos_embed" not in dec.state_dict()  # rebuilt, never saved
    assert torch.equal(dec.pos_embed, sincos_pos_embed((8, 8), 16))
    # with zero blocks, the output at a position is pred(norm(mask_token + pos[id]))
    dec0 = make(depth=0)
    tokens = torch.randn(1, 2, 24)
    out = dec0(tokens, torch.tensor([[3]]), torch.tensor([[7]]))
    ref = dec0.pred(dec0.norm(dec0.mask_token[0, 0] + dec0.pos_embed[0, 1 + 7]))
    torch.testing.assert_close(out[0, 0], ref)


def test_sizes_and_refusals():
    assert decoder_size(make(depth=8, dim=64, heads=4)) == "8x64"
    with pytest.raises(ValueError, match="heads"):
        make(dim=18, heads=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        make(dim=18, heads=2)
    with pytest.raises(ValueError, match="does not fit"):
        ids = torch.zeros(2, 5, dtype=torch.long)
        make()(torch.randn(2, 4, 24), ids, ids[:, :1])


def test_gradients_reach_every_parameter():
    dec = make()
    out = dec(torch.randn(2, 4, 24), torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[6], [7]]))
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())
