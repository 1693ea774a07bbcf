"""End to end: an image whose left half is constant and right half structured, a backbone whose
tokens are their patch embeddings (blocks and position embedding zeroed), a reducer that keeps
the tokens furthest from the constant patch's token: the kept patches must map back onto the
structured half, patch for patch as the ``ids`` say, with and without a flip."""

from __future__ import annotations

import pytest
import torch
from viz_testkit import TINY, random_image

from simprune.data.augment import TwoCropAugment, TwoCropConfig
from simprune.data.augment_ops import crop_resize
from simprune.drive import forward_reduced
from simprune.models import create_model
from simprune.reducers import TokenReducer
from simprune.tokens import TokenState, gather_patches
from simprune.viz.masks import kept_from_ids, patch_boxes, to_original
from simprune.viz.runs import fresh_framework
from simprune.viz.trace import display_augment, trace_pruning

SIZE, PATCH, HALF = 32, 4, 16


class FurthestFrom(TokenReducer):
    """Keep the K tokens furthest (L2) from a reference token."""

    name = "furthest_from"

    def __init__(self, ref: torch.Tensor) -> None:
        self.ref = ref

    def __call__(self, point, k: int) -> TokenState:
        s = point.state
        dist = (s.patches - self.ref).norm(dim=-1)
        return gather_patches(s, dist.topk(k, dim=1).indices.sort(dim=1).values)


def embedding_vit():
    """nano ViT whose hidden states stay the patch embeddings (every residual branch is zero)."""
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_32")
    with torch.no_grad():
        model.pos_embed.zero_()
        for blk in model.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
    return model.eval()


def half_image() -> torch.Tensor:
    """``[3, 32, 32]``: grey left half, noise right half."""
    img = torch.full((3, SIZE, SIZE), 0.5)
    img[:, :, HALF:] = torch.rand(3, SIZE, SIZE - HALF, generator=torch.Generator().manual_seed(1))
    return img


def constant_token(model) -> torch.Tensor:
    x, _ = model.patch_embed(torch.full((1, 3, PATCH, PATCH), 0.5))
    return x[0, 0]


def pixel_centres_of(rects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel (row, col) holding the centre of each patch rectangle ``[..., 4]``."""
    cx = (rects[..., 0] + rects[..., 2]) / 2
    cy = (rects[..., 1] + rects[..., 3]) / 2
    return cy.floor().long(), cx.floor().long()


def check_patch_for_patch(kept: torch.Tensor, boxes, flipped, grid, size) -> torch.Tensor:
    """The raster at every view patch's centre equals that patch's keep flag; returns the raster."""
    raster = to_original(kept, boxes, flipped, size, fill=False)
    rows, cols = pixel_centres_of(patch_boxes(boxes, flipped, grid))
    for v in range(kept.shape[0]):
        assert torch.equal(raster[v][rows[v], cols[v]], kept[v])
    return raster


@torch.no_grad()
def test_kept_patches_land_on_the_structured_half():
    model = embedding_vit()
    boxes = torch.tensor([[[8.0, 2.0, 32.0, 26.0]], [[6.0, 6.0, 30.0, 30.0]]])  # [V=2, B=1, 4]
    flipped = torch.tensor([[False], [True]])
    views = crop_resize(half_image()[None], boxes, flipped, SIZE)  # [2, 3, 32, 32]
    out = forward_reduced(model, views, FurthestFrom(constant_token(model)), keep_rate=0.5)
    grid = model.grid_size
    for rec in out.points:
        kept = kept_from_ids(rec.ids, rec.source.shape[1], grid)
        assert kept.flatten(1).sum(1).tolist() == [rec.tokens_out] * 2
        raster = check_patch_for_patch(kept, boxes[:, 0], flipped[:, 0], grid, (SIZE, SIZE))
        # 24-px boxes on integer edges: every view patch covers exactly 3 x 3 original pixels
        assert raster.flatten(1).sum(1).tolist() == [9 * rec.tokens_out] * 2
        # kept pixels lie on the structured half (or on a patch straddling its edge, 3 px wide)
        cols = torch.nonzero(raster)[:, 2]
        assert cols.min() >= HALF - 3
        # the flipped view sees the structured half on its left: its last view column is dropped
        assert not kept[1, :, -1].any() and not kept[0, :, 0].any()


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
@torch.no_grad()
def test_real_augmentation_patch_for_patch(flip_p):
    model = embedding_vit()
    aug = TwoCropAugment(TwoCropConfig(size=SIZE, scale=(0.3, 0.7), color_ops=False, flip_p=flip_p,
                                       mean=(0.5,) * 3, std=(0.5,) * 3))
    torch.manual_seed(4)
    views = aug(half_image()[None])
    assert views.flipped.all() if flip_p else not views.flipped.any()
    x = torch.cat(views.globals) * 0.5 + 0.5
    out = forward_reduced(model, x, FurthestFrom(constant_token(model)), keep_rate=0.6)
    for rec in out.points:
        kept = kept_from_ids(rec.ids, rec.source.shape[1], model.grid_size)
        check_patch_for_patch(kept, views.boxes[:, 0], views.flipped[:, 0], model.grid_size, (SIZE, SIZE))


@pytest.mark.parametrize("method", ["mean_sim", "simprune"])
def test_trace_maps_back_as_the_ids_say(method):
    cfg, fw = fresh_framework(TINY, method)
    image = random_image(2)
    trace = trace_pruning(fw, display_augment(cfg, fw), image, progress=0.5, seed=3)
    # what is drawn is what the network saw: the plain crop of the image (colour ops off)
    crop = crop_resize(image[None].float() / 255, trace.boxes[:, None], trace.flipped[:, None], SIZE)
    assert torch.allclose(trace.views, crop, atol=1e-5)
    assert len(trace.points) == 3
    for v in range(2):
        for vp in trace.view_points(v):
            kept = kept_from_ids(vp.ids[None], vp.source.numel(), trace.grid)
            check_patch_for_patch(kept, trace.boxes[v][None], trace.flipped[v][None], trace.grid,
                                  (SIZE, SIZE))
            assert int(kept.sum()) == vp.tokens_out
