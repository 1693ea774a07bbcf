"""The ``dinov2`` framework: bad input refused at config time with one line naming the values, the
teacher sees the unmasked view, and a step logs every loss and the masked survival."""

from __future__ import annotations

import pytest
import torch
from framework_testkit import build, random_batch

from simprune.config import make_config
from simprune.frameworks import Progress
from simprune.train.loop import check_config

TINY = {"framework": "dinov2", "model": "vit_nano_patch4_32", "out_dim": 32, "head_hidden": 32,
        "bottleneck": 8, "drop_path": 0.0, "batch_size": 4}


@pytest.mark.parametrize("keys, match", [
    ({"batch_size": 1}, r"batch_size 1: KoLeo needs at least 2 images"),
    ({"mask_ratio_min_max": [0.1, 1.0]}, r"upper bound 1\.0 must be in \[0, 1\)"),
    ({"mask_ratio_min_max": [-0.2, 0.5]}, r"lower bound -0\.2 must be in \[0, 1\)"),
    ({"mask_min_patches": 100}, r"at least 100 patches .* cannot fit the 8x8 patch grid"),
    ({"method": "evit", "protect_masked": True}, r"protect_masked .* applies to reducer.method "
                                                 r"'simprune', got 'evit'"),
    ({"method": "expedite", "reducer_options": {"recon_at": 4}, "reduce_at": [4, 7]},
     r"recon_at = 4 must come after the clustering block 7"),
    ({"method": "expedite", "reducer_options": {"clusters": 80, "recon_at": 7}, "reduce_at": [4, 7]},
     r"clusters K = 80 is larger than the 64 patch tokens"),
    ({"method": "expedite"}, r"iBOT loss reads patch tokens .* set reducer.options recon_at"),
    ({"method": "simprune", "reduce_at": [0, 4]}, r"must not contain 0"),
])
def test_bad_input_is_one_line(keys, match):
    with pytest.raises(ValueError, match=match) as err:
        cfg = make_config({**TINY, **keys})
        check_config(cfg)
        build({**TINY, **keys})
    assert "\n" not in str(err.value)


def test_koleo_off_allows_a_batch_of_one():
    check_config(make_config({**TINY, "batch_size": 1, "koleo_weight": 0.0}))


def test_teacher_sees_the_unmasked_view_and_student_the_masked_one():
    fw, augment = build(TINY)
    batch = random_batch(augment, n=4)
    g = torch.cat(batch.views.globals)
    bm = fw.masks(batch, Progress(2, 10, 10), 2)
    assert bm.mask.any()
    with torch.no_grad():
        dual = fw.encode_masked(g, None, bm.mask, bm.max_target, 0.5)
        dense_teacher = fw.teacher["backbone"].forward_features(g)
        torch.testing.assert_close(dual.teacher.state.x, dense_teacher.x)
        dense_student = fw.student["backbone"].eval().forward_features(g)
    changed = (dual.student.state.x - dense_student.x).abs().sum((1, 2)) > 0
    assert torch.equal(changed, bm.mask.any(1))  # exactly the masked crops differ


def test_step_logs_losses_survival_and_collapse():
    fw, augment = build({**TINY, "method": "simprune", "keep_rate": 0.7})
    out = fw(random_batch(augment, n=4), Progress(5, 10, 10))
    for key in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "kl_to_center",
                "masked/p1", "masked/p2", "masked/p3", "tokens/p3", "ibot_valid"):
        assert key in out.logs, key
    assert torch.isfinite(out.loss) and out.per_sample.shape == (4,)
    out.loss.backward()
    assert fw.student["mask_token"].token.grad is not None


def test_one_to_one_matching_is_refused_with_the_alignment():
    cfg = make_config({"framework": "dinov2", "model": "vit_nano_patch4_32", "method": "simprune",
                       "keep_rate": 0.8, "reducer_options": {"matching": "one_to_one"}})
    with pytest.raises(ValueError, match="pairs SimPrune's visible tokens by argmax"):
        check_config(cfg)
