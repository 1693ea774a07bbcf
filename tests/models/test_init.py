"""MoCo v3's ViT initialisation switches: fixed 2-D sin-cos position embedding, frozen patch
projection, Xavier-uniform linears (simprune.models.init)."""

from __future__ import annotations

import math

import pytest
import torch

from simprune.config import make_config
from simprune.models import create_model
from simprune.models.init import sincos_pos_embed
from simprune.run import build_framework, check_config


def test_sincos_matches_a_loop_rederivation():
    gh, gw, dim = 3, 5, 8
    table = sincos_pos_embed((gh, gw), dim)
    assert table.shape == (1, 1 + gh * gw, dim) and table.dtype == torch.float32
    assert torch.equal(table[0, 0], torch.zeros(dim))  # CLS row
    quarter = dim // 4
    for r in range(gh):
        for c in range(gw):
            expect = []
            for pos in (c, r):  # column first, then row
                w = [10000.0 ** (-k / quarter) for k in range(quarter)]
                expect += [math.sin(pos * x) for x in w] + [math.cos(pos * x) for x in w]
            torch.testing.assert_close(table[0, 1 + r * gw + c], torch.tensor(expect), atol=1e-6, rtol=0)
    assert len({tuple(row.tolist()) for row in table[0, 1:]}) == gh * gw  # every patch differs


def test_sincos_needs_dim_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        sincos_pos_embed((2, 2), 6)


def test_moco_switches_freeze_and_initialise():
    torch.manual_seed(0)
    m = create_model("vit_micro_patch4_32", init="moco", pos_embed="sincos", freeze_patch_embed=True)
    d = m.embed_dim
    torch.testing.assert_close(m.pos_embed.detach(), sincos_pos_embed(m.grid_size, d))
    assert not m.pos_embed.requires_grad
    assert not any(p.requires_grad for p in m.patch_embed.parameters())
    qkv = m.blocks[0].attn.qkv.weight  # [3D, D]: Xavier bound of one D×D matrix
    bound = math.sqrt(6.0 / (2 * d))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    fc1 = m.blocks[0].mlp.fc1.weight  # [4D, D]
    bound = math.sqrt(6.0 / (5 * d))
    assert fc1.abs().max() <= bound and fc1.abs().max() > 0.95 * bound
    assert m.cls_token.abs().max() < 1e-5
    # gradients reach the trainable parameters, not the frozen ones
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert m.patch_embed.proj.weight.grad is None and m.pos_embed.grad is None
    assert m.blocks[0].attn.qkv.weight.grad is not None and m.cls_token.grad is not None
    # the default stays DeiT's: learned, trained position embedding
    dflt = create_model("vit_micro_patch4_32")
    assert dflt.pos_embed.requires_grad and dflt.patch_embed.proj.weight.requires_grad
    assert dflt.blocks[0].attn.qkv.weight.std() < 0.021


def test_training_config_passes_the_switches_and_the_optimizer_skips_frozen():
    from simprune.train.optim import param_groups

    cfg = make_config(overrides={"model": "vit_nano_patch4_32", "init": "moco", "pos_embed": "sincos",
                                 "freeze_patch_embed": True, "moco_hidden": 32, "moco_dim": 16})
    fw = build_framework(cfg)
    student = fw.student["backbone"]
    assert not student.pos_embed.requires_grad and not student.patch_embed.proj.weight.requires_grad
    torch.testing.assert_close(fw.teacher["backbone"].pos_embed, student.pos_embed)
    trained = {id(p) for g in param_groups(fw.student) for p in g["params"]}
    assert id(student.pos_embed) not in trained and id(student.patch_embed.proj.weight) not in trained


@pytest.mark.parametrize("key,value", [("init", "xavier"), ("pos_embed", "rope")])
def test_unknown_values_name_the_valid_ones(key, value):
    with pytest.raises(ValueError, match=f"unknown {key} '{value}'; valid: "):
        check_config(make_config(overrides={key: value}))
    with pytest.raises(ValueError, match=f"unknown ViT {key} '{value}'"):
        create_model("vit_nano_patch4_32", **{key: value})
