"""Every framework × reducer pairing trains a few CPU steps (DINO with local views)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_testkit import TINY, with_heads

from simprune.config import make_config
from simprune.train.loop import Trainer

METHODS = ["dense", "simprune", "evit", "tome", "random"]


@pytest.mark.parametrize("framework", ["dino", "mocov3", "supervised"])
@pytest.mark.parametrize("method", METHODS)
def test_framework_reducer_pairing_trains(framework, method, data_root, tmp_path):
    if framework == "supervised" and method == "simprune":
        pytest.skip("a pair reducer needs two branches (refused at config time, tested elsewhere)")
    torch.set_num_threads(1)
    extra = {"local_views": 2} if framework == "dino" else {}
    cfg = make_config(with_heads(dict(TINY, framework=framework)), {
        "method": method, "data": str(data_root), "out": str(tmp_path / "run"), "max_steps": 3,
        "eval_at_end": False, **extra})
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.framework.student.state_dict().items()}
    result = trainer.run()
    assert result["step"] == 3
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in lines)
    rec = lines[-1]
    if method == "dense":
        assert "tokens/p1" not in rec or rec["tokens/p1"] == 64
    else:
        assert [rec["tokens/p1"], rec["tokens/p2"], rec["tokens/p3"]] == (
            [52, 43, 35] if method == "evit" else [51, 41, 33])
    if method == "simprune":
        assert 0 <= rec["window"] <= 1 and 0 <= rec["m2o/p1"] <= 1
    if framework == "dino":
        assert 0 < rec["teacher_entropy"] <= math.log(64) + 1e-4 and rec["kl_to_center"] >= -1e-5
    after = trainer.framework.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something
    assert (tmp_path / "run" / "checkpoint.pt").exists()


DINOV2 = {"dense": {}, "simprune": {}, "simprune_protect": {"method": "simprune", "protect_masked": True},
          "evit": {}, "tome": {}, "random": {},
          "expedite": {"reduce_at": [4, 10], "reducer_options": {"recon_at": 10}}}


@pytest.mark.parametrize("case", sorted(DINOV2))
def test_dinov2_reducer_pairing_trains(case, data_root, tmp_path):
    """DINOv2-style training (iBOT + KoLeo, 2 local views) with every reducer kind: A.4's SimPrune
    (literal and protect_masked), one-branch EViT, ToMe, random, and Expediting ViT with
    reconstruction; each pairing's bench flops_ratio is below 1."""
    from simprune.bench.flops import step_report

    torch.set_num_threads(1)
    extra = {"method": case, **DINOV2[case]}
    cfg = make_config(with_heads(dict(TINY, framework="dinov2")), {
        "data": str(data_root), "out": str(tmp_path / "run"), "max_steps": 3, "eval_at_end": False,
        "local_views": 2, **extra})
    trainer = Trainer(cfg)
    result = trainer.run()
    assert result["step"] == 3
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rec = lines[-1]
    for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "kl_to_center",
                "ibot_teacher_entropy", "ibot_kl_to_center"):
        assert all(math.isfinite(r[key]) for r in lines), key
    assert rec["loss"] == pytest.approx(rec["dino_loss"] + rec["ibot_loss"] + 0.1 * rec["koleo_loss"],
                                        rel=1e-4)
    if case != "dense":
        points = [k for k in rec if k.startswith("masked/p")]
        assert points and all(0 <= rec[k] <= 1 for k in points)
    if case in ("dense", "simprune_protect"):
        assert all(rec[k] == 1.0 for k in rec if k.startswith("masked/p"))
    report = step_report(cfg)
    assert report["flops_ratio"] == 1.0 if case == "dense" else report["flops_ratio"] < 1.0


def test_moco_teacher_head_uses_batch_statistics():
    """The momentum projector's BatchNorm must normalise with batch statistics (its running
    buffers are never trained), while the teacher backbone runs without drop-path."""
    from simprune.drive.plan import DENSE_PLAN
    from simprune.frameworks import MoCoV3
    from simprune.models import create_model

    torch.manual_seed(0)
    fw = MoCoV3(create_model("vit_nano_patch4_32", drop_path_rate=0.5), DENSE_PLAN, dim=16, hidden=32)
    x = torch.randn(8, 3, 32, 32)
    fw.encode(x, None, 0.0)
    assert not fw.teacher["backbone"].training and fw.teacher["head"].training
    feats = fw.teacher["head"].projector[:2](torch.randn(8, 48) * 50 + 3)  # Linear + BN
    assert feats.mean(0).abs().max() < 1e-4  # batch-normalised, not running-stat normalised
