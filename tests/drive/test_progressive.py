"""PCAE's progressive dropping over all patch tokens, layer by layer (Figure 3a's forward)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reducer_testkit import images, tiny_model

from simprune.drive.progressive import drop_count, progressive_layers
from simprune.tokens import initial_state


def test_token_counts_per_layer():
    model = tiny_model(seed=0, reduce_at=())
    x = images(2, 1)
    counts = {d: [t.shape[1] for t in progressive_layers(model, x, d, (1, 3), 0.5)]
              for d in ("mean_sim", "random", "none")}
    assert counts["none"] == [64] * 5
    assert counts["mean_sim"] == counts["random"] == [64, 32, 32, 16, 16]
    assert drop_count(55, 0.5) == 27 and drop_count(1, 0.5) == 1


def test_no_dropping_is_the_plain_blocks_on_patches_without_cls():
    model = tiny_model(seed=0, reduce_at=())
    x = images(2, 2)
    layers = progressive_layers(model, x, "none")
    with torch.no_grad():
        patches, _ = model.patch_embed(x)
        ref = patches + model.pos_embed[:, 1:]
        torch.testing.assert_close(layers[0], ref)
        for i, block in enumerate(model.blocks, start=1):
            ref = block(initial_state(ref, num_prefix=0)).x
            torch.testing.assert_close(layers[i], ref)


def test_mean_sim_keeps_the_least_mean_like_after_the_attention():
    model = tiny_model(seed=0, reduce_at=())
    x = images(1, 3)
    layers = progressive_layers(model, x, "mean_sim", (1,), 0.25)
    with torch.no_grad():
        patches, _ = model.patch_embed(x)
        h = patches + model.pos_embed[:, 1:]
        block = model.blocks[0]
        h = h + block.attn(block.norm1(h))[0]
        sim = F.cosine_similarity(h[0], h[0].mean(0), dim=-1)
        keep = sim.argsort()[:16].sort().values
        h = h[:, keep]
        h = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(layers[1], h)


def test_refusals():
    model = tiny_model(seed=0, reduce_at=())
    with pytest.raises(ValueError, match="drop"):
        progressive_layers(model, images(1, 1), "evit")
    with pytest.raises(ValueError, match="blocks are 1..4"):
        progressive_layers(model, images(1, 1), "random", (0, 2))
