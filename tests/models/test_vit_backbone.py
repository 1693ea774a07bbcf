"""The ViT backbone: timm names, equality with an explicit ViT, attention extras, pos-embed, drop-path."""

from __future__ import annotations

import math

import pytest
import torch
from model_testkit import (
    ref_attention,
    ref_attention_probs,
    ref_layer_norm,
    ref_vit_forward,
    tiny_config,
    tiny_model,
)

from simprune.models import ReductionPoint, VisionTransformer, create_model
from simprune.tokens import TokenState

TIMM_NAMES = [
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "blocks.0.norm1.weight",
    "blocks.0.norm1.bias",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias",
    "blocks.0.attn.proj.weight",
    "blocks.0.attn.proj.bias",
    "blocks.0.norm2.weight",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc1.bias",
    "blocks.0.mlp.fc2.weight",
    "blocks.0.mlp.fc2.bias",
    "norm.weight",
    "norm.bias",
]


def test_timm_weight_names_and_shapes():
    model = VisionTransformer(tiny_config(num_classes=7))
    sd = model.state_dict()
    for name in [*TIMM_NAMES, "head.weight", "head.bias"]:
        assert name in sd, name
    d, n = 32, 64
    assert sd["cls_token"].shape == (1, 1, d)
    assert sd["pos_embed"].shape == (1, 1 + n, d)
    assert sd["patch_embed.proj.weight"].shape == (d, 3, 4, 4)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * d, d)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * d, d)
    assert sd["head.weight"].shape == (7, d)
    assert f"blocks.{model.depth - 1}.mlp.fc2.weight" in sd
    assert f"blocks.{model.depth}.norm1.weight" not in sd


def test_no_head_without_classes():
    sd = VisionTransformer(tiny_config(num_classes=0)).state_dict()
    assert not any(k.startswith("head.") for k in sd)


def test_deit_small_matches_timm_parameter_count():
    # timm's deit_small_patch16_224 has 22,050,664 parameters with its 1000-class head.
    model = create_model("deit_small_patch16_224", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 22_050_664


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_equals_explicit_prenorm_vit(dtype):
    model = tiny_model(seed=1, scale=8.0, num_classes=5).to(dtype)
    images = torch.randn(2, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(3))
    tokens_ref, head_ref = ref_vit_forward(model, images)
    with torch.no_grad():
        state = model.forward_features(images)
        head = model(images)
    assert state.x.shape == (2, 65, 32)
    torch.testing.assert_close(state.x, tokens_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head, head_ref, atol=1e-5, rtol=1e-5)
    # the attention must not be uniform, else the comparison would say little
    h = ref_layer_norm(tokens_ref[0], torch.ones(32, dtype=dtype), torch.zeros(32, dtype=dtype))
    probs, _ = ref_attention_probs(h, model.blocks[0].attn.qkv.weight.detach(),
                                   model.blocks[0].attn.qkv.bias.detach(), 2)
    assert probs[0].max() > 5.0 / 65


def _point_at(model, images, block, need):
    gen = model.stages(images, need)
    point = gen.send(None)
    while point.block != block:
        point = gen.send(None)
    return point


def _input_of_block(model, images, block):
    """Tokens entering 1-indexed ``block``, computed with full blocks (no points)."""
    state = model.embed(images)
    for blk in model.blocks[: block - 1]:
        state = blk(state)
    return state.x


@torch.no_grad()
def test_cls_attention_row_equals_explicit_head_average():
    model = tiny_model(seed=2, scale=8.0)
    images = torch.randn(3, 3, 32, 32)
    point = _point_at(model, images, 3, frozenset({"cls_attn", "qk"}))
    x_in = _input_of_block(model, images, 3)
    blk = model.blocks[2]
    for b in range(3):
        h = ref_layer_norm(x_in[b], blk.norm1.weight, blk.norm1.bias)
        probs, _ = ref_attention_probs(h, blk.attn.qkv.weight, blk.attn.qkv.bias, 2)
        expected = sum(p[0] for p in probs) / len(probs)
        torch.testing.assert_close(point.extras.cls_attn[b], expected, atol=1e-6, rtol=1e-5)
        assert math.isclose(float(point.extras.cls_attn[b].sum()), 1.0, abs_tol=1e-5)
        # the point's state is after the attention residual, before the MLP
        torch.testing.assert_close(point.state.x[b], x_in[b] + ref_attention(h, blk.attn),
                                   atol=1e-5, rtol=1e-5)
        # q and k are per head, [H, n, hd], in timm's layout
        qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        torch.testing.assert_close(point.extras.q[b, 1], qkv[:, 16:32], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(point.extras.k[b, 0], qkv[:, 32:48], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_extras_only_on_request():
    model = tiny_model()
    point = _point_at(model, torch.randn(1, 3, 32, 32), 2, frozenset())
    assert point.extras.cls_attn is None and point.extras.k is None and point.extras.q is None
    assert isinstance(point, ReductionPoint) and point.index == 0


@torch.no_grad()
def test_proportional_attention_with_sizes():
    model = tiny_model(seed=4, scale=8.0)
    attn = model.blocks[0].attn
    x = torch.randn(2, 9, 32)
    size = torch.rand(2, 9) * 4 + 0.5
    out, extras = attn(x, size=size, need=frozenset({"cls_attn"}))
    for b in range(2):
        torch.testing.assert_close(out[b], ref_attention(x[b], attn, size=size[b]), atol=1e-5,
                                   rtol=1e-5)
        probs, _ = ref_attention_probs(x[b], attn.qkv.weight, attn.qkv.bias, 2, size=size[b])
        torch.testing.assert_close(extras.cls_attn[b], (probs[0][0] + probs[1][0]) / 2, atol=1e-6,
                                   rtol=1e-5)
    # sizes of one are ordinary attention; sizes change the result otherwise
    plain, _ = attn(x)
    ones, _ = attn(x, size=torch.ones(2, 9))
    torch.testing.assert_close(plain, ones)
    assert not torch.allclose(plain, out, atol=1e-4)


@torch.no_grad()
def test_attention_connection_mask():
    model = tiny_model(seed=5, scale=8.0)
    attn = model.blocks[1].attn
    x = torch.randn(2, 7, 32)
    mask = torch.rand(2, 7, 7) > 0.5
    mask[:, :, 0] = True  # every query may attend somewhere
    out, extras = attn(x, mask=mask, need=frozenset({"cls_attn"}))
    for b in range(2):
        torch.testing.assert_close(out[b], ref_attention(x[b], attn, mask=mask[b]), atol=1e-5,
                                   rtol=1e-5)
        assert torch.all(extras.cls_attn[b][~mask[b, 0]] == 0)


@torch.no_grad()
def test_pos_embed_interpolation_for_16px_inputs():
    model = tiny_model(seed=6)
    d = model.embed_dim
    gx = torch.arange(8.0).repeat(8)  # column index of each patch in the 8x8 grid
    with torch.no_grad():
        model.pos_embed[0, 1:] = gx[:, None] * torch.linspace(-1, 1, d)[None, :]
        model.pos_embed[0, 0] = 3.0
    pos = model.interpolate_pos_embed((4, 4))
    assert pos.shape == (1, 17, d)
    assert torch.equal(pos[0, 0], torch.full((d,), 3.0))  # CLS position untouched
    ramp = pos[0, 1:, -1].reshape(4, 4)
    assert torch.allclose(ramp, ramp[:1].expand(4, 4), atol=1e-6)  # constant down the columns
    assert torch.all(ramp[0, 1:] > ramp[0, :-1])  # still increasing along the row
    assert model.interpolate_pos_embed((8, 8)) is model.pos_embed

    small = torch.randn(2, 3, 16, 16)
    state = model.embed(small)
    assert state.x.shape == (2, 17, d) and state.num_patches == 16
    assert torch.equal(state.ids, torch.arange(16).expand(2, 16))
    feats = model.forward_features(small)
    assert feats.x.shape == (2, 17, d) and torch.isfinite(feats.x).all()
    # a 16-px image seen by the model: patch embedding + the resampled position embedding
    patches = model.patch_embed(small)[0]
    torch.testing.assert_close(state.x[:, 1:], patches + pos[:, 1:])


def test_drop_path_identity_in_eval_and_active_in_train():
    base = tiny_model(seed=7, drop_path_rate=0.0)
    dp = tiny_model(seed=7, drop_path_rate=0.5)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = base(images)
        torch.testing.assert_close(dp.eval()(images), ref)
        dp.train()
        torch.manual_seed(0)
        a = dp(images)
        torch.manual_seed(1)
        b = dp(images)
        base.train()
        torch.testing.assert_close(base(images), ref)  # rate 0: training mode changes nothing
    assert not torch.allclose(a, ref, atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-5)
    rates = [blk.drop_path for blk in dp.blocks]
    assert rates[0] == 0.0 and math.isclose(rates[-1], 0.5) and rates == sorted(rates)


def test_stages_yields_at_each_point_and_accepts_reduced_state():
    model = tiny_model(reduce_at=(1, 3, 4))
    gen = model.stages(torch.randn(2, 3, 32, 32))
    seen = []
    point = gen.send(None)
    try:
        while True:
            seen.append((point.block, point.index, point.state.num_patches))
            s = point.state
            keep = torch.arange(0, s.num_patches, 2).expand(2, -1)
            x = torch.cat([s.prefix, s.patches[:, ::2]], dim=1)
            point = gen.send(TokenState(x, s.ids.gather(1, keep), s.source, num_prefix=1))
    except StopIteration as stop:
        final = stop.value
    assert seen == [(1, 0, 64), (3, 1, 32), (4, 2, 16)]
    assert final.x.shape == (2, 1 + 8, 32)
    assert torch.equal(final.ids[0], torch.tensor([0, 8, 16, 24, 32, 40, 48, 56]))


def test_set_reduce_at_validates():
    model = tiny_model()
    model.set_reduce_at([1, 4])
    assert model.reduce_at == (1, 4)
    with pytest.raises(ValueError, match="outside 0..4"):
        model.set_reduce_at([5])


def test_point_zero_pauses_after_the_patch_embedding():
    """Point 0 shows the embedded tokens (no attention yet); a state sent back there is what
    block 1 runs on."""
    model = tiny_model(reduce_at=(0, 2))
    x = torch.randn(2, 3, 32, 32)
    gen = model.stages(x, frozenset({"cls_attn"}))
    point = gen.send(None)
    assert (point.block, point.index) == (0, 0)
    assert torch.equal(point.state.x, model.embed(x).x)
    assert point.extras.cls_attn is None and point.extras.k is None
    s = point.state
    kept = TokenState(torch.cat([s.prefix, s.patches[:, :16]], 1), s.ids[:, :16], s.source, num_prefix=1)
    point = gen.send(kept)
    assert (point.block, point.index, point.state.num_patches) == (2, 1, 16)
    try:
        gen.send(None)
    except StopIteration as stop:
        final = stop.value
    manual = model.blocks[1](model.blocks[0](kept))
    for blk in model.blocks[2:]:
        manual = blk(manual)
    torch.testing.assert_close(final.x, model.norm(manual.x), rtol=0, atol=0)


def keep_even(s: TokenState) -> TokenState:
    keep = torch.arange(0, s.num_patches, 2).expand(s.x.shape[0], -1)
    return TokenState(torch.cat([s.prefix, s.patches[:, ::2]], 1), s.ids.gather(1, keep), s.source,
                      num_prefix=1)


@pytest.mark.parametrize("placement", ["attention", "block"])
def test_a_point_sits_before_the_mlp_or_after_the_whole_block(placement):
    """Placement ``attention``: block 2's MLP runs on the reduced tokens; ``block``: on all of
    them, and the reduction takes the block's output. Written out with the blocks' parts."""
    model = tiny_model(reduce_at=(2,))
    model.set_reduce_at((2,), placement=placement)
    x = torch.randn(2, 3, 32, 32)
    gen = model.stages(x, frozenset({"cls_attn"}))
    point = gen.send(None)
    assert point.after_block == (placement == "block")
    b1, b2 = model.blocks[0], model.blocks[1]
    h = b1(model.embed(x))
    attended = h.with_x(h.x + b2.attn(b2.norm1(h.x))[0])
    whole = attended.with_x(attended.x + b2.mlp(b2.norm2(attended.x)))
    expect = whole if placement == "block" else attended
    torch.testing.assert_close(point.state.x, expect.x, rtol=0, atol=1e-6)
    assert point.extras.cls_attn is not None  # block 2's attention in either placement
    try:
        gen.send(keep_even(point.state))
    except StopIteration as stop:
        final = stop.value
    reduced = keep_even(expect)
    if placement == "attention":
        reduced = reduced.with_x(reduced.x + b2.mlp(b2.norm2(reduced.x)))
    for blk in model.blocks[2:]:
        reduced = blk(reduced)
    torch.testing.assert_close(final.x, model.norm(reduced.x), rtol=0, atol=1e-5)


def test_placement_is_validated():
    model = tiny_model()
    with pytest.raises(ValueError, match="placement 'mlp' is not one of attention, block"):
        model.set_reduce_at([1], placement="mlp")
    with pytest.raises(ValueError, match="placement"):
        tiny_model(point_placement="after")
