"""MAE: masking at point 0, one prediction per masked patch, the loss against a loop, refusals."""

from __future__ import annotations

import pytest
import torch
from framework_testkit import SMALL_MIM, random_batch
from framework_testkit import build as build_framework_of

from simprune.config import make_config
from simprune.frameworks import MAE, Batch, Progress
from simprune.losses.mim import patchify
from simprune.run import build_framework, check_config, data_info
from simprune.train.evaluate import pooled

SMALL = {"framework": "mae", **SMALL_MIM}


def build(**over):
    return build_framework_of({**SMALL, **over})


def batch(augment, n: int = 3, seed: int = 0) -> Batch:
    return random_batch(augment, n, seed, first_index=10)


def test_cpu_recipe_sizes():
    cfg = make_config({"framework": "mae", "model": "vit_micro_patch4_32"})
    fw = build_framework(cfg, data_info(cfg))
    assert isinstance(fw, MAE)
    assert fw.backbone.reduce_at == (0,)
    assert fw.decoder_size == "8x64" and fw.decoder.pred.out_features == 4 * 4 * 3
    assert fw.decoder.blocks[0].attn.num_heads == 4


def test_loss_is_the_mean_over_masked_patches_by_a_loop():
    fw, aug = build()
    b = batch(aug)
    prog = Progress(5, 100, 10)
    seen = {}
    handle = fw.decoder.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    out = fw(b, prog)
    handle.remove()
    x = b.views.globals[0]
    m = fw.mask(x, b, prog)
    assert torch.equal(seen["args"][2], m.masked)  # the decoder predicts at the masked ids only
    pred = seen["out"]
    assert pred.shape == (3, 48, 48)
    patches = patchify(x, 4)
    per = []
    for s in range(3):
        assert not set(m.visible[s].tolist()) & set(m.masked[s].tolist())
        terms = []
        for j, pid in enumerate(m.masked[s].tolist()):
            t = patches[s, pid]
            t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-6)
            terms.append(((pred[s, j] - t) ** 2).mean())
        per.append(torch.stack(terms).mean())
    torch.testing.assert_close(out.per_sample, torch.stack(per).detach())
    torch.testing.assert_close(out.loss, torch.stack(per).mean())
    assert out.logs["visible"] == 16 and out.logs["decoded"] == 48
    assert [(p.block, p.tokens_in, p.tokens_out) for p in out.points] == [(0, 64, 16)]


def test_raw_pixel_targets_without_norm_pix():
    fw, aug = build(norm_pix_loss=False)
    b = batch(aug)
    prog = Progress(0, 10, 10)
    m = fw.mask(b.views.globals[0], b, prog)
    pred, _ = fw.predict_pixels(b.views.globals[0], m)
    target = patchify(b.views.globals[0], 4).gather(1, m.masked.unsqueeze(-1).expand(-1, -1, 48))
    torch.testing.assert_close(fw(b, prog).loss, ((pred - target) ** 2).mean())


def test_masks_change_with_the_step_and_gradients_reach_encoder_and_decoder():
    fw, aug = build()
    b = batch(aug)
    a = fw.mask(b.views.globals[0], b, Progress(0, 10, 10))
    c = fw.mask(b.views.globals[0], b, Progress(1, 10, 10))
    assert not torch.equal(a.visible, c.visible)
    fw(b, Progress(0, 10, 10)).loss.backward()
    for name in ("backbone.patch_embed.proj.weight", "backbone.cls_token",
                 "backbone.blocks.11.mlp.fc2.weight", "decoder.mask_token", "decoder.pred.weight",
                 "decoder.embed.weight"):
        grad = dict(fw.student.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_adamw_betas_are_the_references():
    fw, _ = build()
    assert all(g["betas"] == (0.9, 0.95) for g in fw.param_groups())
    opt = torch.optim.AdamW(fw.param_groups(), lr=1e-3)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_evaluation_pools_the_patch_tokens_by_default():
    fw, _ = build()
    assert fw.eval_pool == "mean" and fw.eval_protocol == "knn"
    with pytest.raises(ValueError, match="has the branches student, got branch 'teacher'"):
        fw.eval_backbone("teacher")  # MAE has no teacher
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        state = fw.eval_backbone().forward_features(x)  # unmasked: all 64 patches
    assert state.num_patches == 64
    torch.testing.assert_close(pooled(state, "mean"), state.x[:, 1:].mean(1))
    assert torch.equal(pooled(state, "cls"), state.x[:, 0])
    fw_cls, _ = build(eval_pool="cls")
    assert fw_cls.eval_pool == "cls"


@pytest.mark.parametrize(("over", "match"), [
    ({"method": "evit"}, r"remove the \[reducer\]"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"decoder_dim": 18}, "decoder_dim"),
    ({"eval_pool": "max"}, "eval_pool"),
])
def test_refusals(over, match):
    with pytest.raises(ValueError, match=match):
        check_config(make_config({**SMALL, **over}))


def test_mae_has_no_teacher():
    with pytest.raises(ValueError, match="teacher"):
        make_config({**SMALL, "momentum": 0.99})
