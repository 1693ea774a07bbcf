"""Supervised classification: pooling, mixing, refusals, a short run with top-1/top-5, and
fine-tuning from a pre-trained run (which also exercises the frozen-teacher loader)."""

from __future__ import annotations

import pytest
import torch
from train_testkit import TINY

from simprune.config import make_config
from simprune.frameworks.supervised import mix_batch, pool_tokens
from simprune.teachers import load_frozen_teacher
from simprune.tokens import TokenState
from simprune.train.loop import Trainer, check_config


def test_mean_pool_leaves_out_synthetic_tokens():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # CLS + 3 patches
    ids = torch.tensor([[0, 5, -1], [2, -1, 7]])
    state = TokenState(x=x, ids=ids, source=torch.zeros(2, 8, dtype=torch.long))
    assert torch.equal(pool_tokens(state, "cls"), x[:, 0])
    expect = torch.stack([(x[0, 1] + x[0, 2]) / 2, (x[1, 1] + x[1, 3]) / 2])
    assert torch.allclose(pool_tokens(state, "mean"), expect)


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixed_targets_are_distributions_of_the_two_labels(mixup, cutmix):
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, t = mix_batch(x, y, 5, 0.0, mixup, cutmix)
    assert mixed.shape == x.shape and torch.allclose(t.sum(1), torch.ones(4))
    assert torch.equal(t[:, 4], torch.zeros(4))  # only the pair's labels get mass
    assert torch.allclose(t[0, 0] + t[0, 3], torch.tensor(1.0))


def test_supervised_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="pair reducer"):
        check_config(make_config({"framework": "supervised", "method": "simprune"}))
    with pytest.raises(ValueError, match=r"teacher.*none"):
        make_config({"framework": "supervised", "momentum": 0.9})
    with pytest.raises(ValueError, match="pool"):
        check_config(make_config({"framework": "supervised", "supervised": {"pool": "max"}}))


def test_supervised_trains_evaluates_and_finetunes(data_root, tmp_path):
    torch.set_num_threads(1)
    base = {**TINY, "data": str(data_root), "epochs": 0.25, "knn_test": 64}
    run = tmp_path / "sup"
    res = Trainer(make_config(base, {"framework": "supervised", "method": "evit", "keep_rate": 0.7,
                                     "out": str(run)})).run()
    assert res["finished"] and 0 <= res["top1"] <= res["top5"] <= 100 and res["test"] == 64
    # a frozen teacher loads that run's backbone strictly, in eval mode, without gradients
    teacher = load_frozen_teacher(run)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="shape"):
        load_frozen_teacher(run, model="vit_micro_patch4_32")  # another width
    # fine-tuning starts from the run's backbone, exactly
    ft = Trainer(make_config(base, {"framework": "supervised", "out": str(tmp_path / "ft"),
                                    "supervised": {"init_from": str(run)}}))
    got = ft.framework.student["backbone"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in teacher.state_dict().items())
