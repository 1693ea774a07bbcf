"""Dynamic SimPrune inside the dual-branch frameworks: the gates are trained parameters (optimiser,
checkpoint, not the EMA teacher), the budget penalty is in the loss, nothing is dropped in the
warm-up, and bad settings are refused with what is valid."""

from __future__ import annotations

import pytest
import torch
from framework_testkit import build, random_batch

from simprune.config import make_config
from simprune.frameworks import Progress
from simprune.run import build_framework, check_config

MOCO = {"framework": "mocov3", "model": "vit_nano_patch4_32", "moco_hidden": 64, "moco_dim": 32,
        "method": "dynamic_simprune", "reducer_options": {"flops_budget": 0.8}, "drop_path": 0.0}
DINO = {"framework": "dino", "model": "vit_nano_patch4_32", "out_dim": 64, "head_hidden": 64,
        "bottleneck": 16, "local_views": 2, "method": "dynamic_simprune", "drop_path": 0.0}


def _step(fw, augment, t, dtype=None):
    batch = random_batch(augment, n=4)
    fw.trainable().train()
    ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with ctx:
        out = fw(batch, Progress(int(t * 1000), 1000, 100))
    return out


def test_gates_are_trained_checkpointed_and_not_averaged():
    fw, _ = build(MOCO)
    gate_params = list(fw.student["reducer"].parameters())
    assert len(gate_params) == 2 * 3  # weight and bias per point
    in_groups = {id(p) for g in fw.param_groups() for p in g["params"]}
    assert all(id(p) in in_groups for p in gate_params)
    keys = fw.state_dict().keys()
    assert "student.reducer.gates.0.weight" in keys
    assert not any(k.startswith("teacher.reducer") for k in keys)
    assert fw.plan.reducer.gates is fw.student["reducer"]


@pytest.mark.parametrize("keys", [MOCO, DINO], ids=["mocov3", "dino"])
def test_penalty_in_the_loss_and_gates_get_gradients(keys):
    fw, augment = build(keys)
    out = _step(fw, augment, 0.5)
    assert float(out.logs["budget_penalty"]) > 0
    assert 0.0 < float(out.logs["flops"]) < 1.1
    for i in (1, 2, 3):
        assert float(out.logs[f"kept_min/p{i}"]) <= float(out.logs[f"kept_max/p{i}"])
    out.loss.backward()
    for p in fw.student["reducer"].parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_penalty_is_what_the_reducer_says():
    fw, augment = build(MOCO)
    torch.manual_seed(0)
    with_pen = _step(fw, augment, 0.5)
    fw.plan.reducer.penalty = 0.0
    torch.manual_seed(0)
    without = _step(fw, augment, 0.5)
    torch.testing.assert_close(with_pen.loss - without.loss, with_pen.logs["budget_penalty"] / 1.0)


def test_no_dropping_in_the_warmup():
    fw, augment = build(MOCO)
    out = _step(fw, augment, 0.02)
    assert all(p.student.tokens_out == 64 and p.stats is None for p in out.points)
    assert "budget_penalty" not in out.logs
    out = _step(fw, augment, 0.03)
    assert all(p.stats is not None for p in out.points)


def test_bf16_step_is_finite():
    fw, augment = build(DINO)
    out = _step(fw, augment, 0.7, torch.bfloat16)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fw.student["reducer"].parameters())


@pytest.mark.parametrize("framework", ["supervised", "distill"])
def test_one_branch_framework_names_where_it_works(framework):
    cfg = make_config({"framework": framework, "method": "dynamic_simprune",
                       **({"kd_random_teacher": True} if framework == "distill" else {})})
    with pytest.raises(ValueError) as err:
        check_config(cfg)
    assert "dynamic_simprune" in str(err.value) and "dino, mocov3" in str(err.value)


def test_budget_out_of_reach_names_the_range():
    cfg = make_config({**MOCO, "reducer_options": {"flops_budget": 0.3}})
    check_config(cfg)
    with pytest.raises(ValueError, match=r"flops_budget 0.3 is out of reach .* valid: 0\.\d+ .* to below"):
        build_framework(cfg)
