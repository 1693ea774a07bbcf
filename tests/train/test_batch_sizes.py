"""Batch sizes that cannot learn are refused when the config is checked; the others learn.

What each framework does with one image per step (per process):

- MoCo v3 contrasts each image with the rest of the batch: batch 1 has no negatives and a loss of
  exactly 0, so it is refused (two processes of 1 image each contrast across processes: allowed).
- DINO matches each image's views to the teacher's on the same image and needs no other image: its
  centre becomes a moving average over steps, and the loss and gradients stay non-zero. Allowed.
- Supervised cross-entropy needs no other image. Allowed; but Mixup and CutMix mix an image with
  another one of its batch, so at 1 image per process they would mix it with itself and do
  nothing: refused when they are on.
"""

from __future__ import annotations

import math

import pytest
import torch
from train_testkit import TINY, with_heads

from simprune.config import make_config
from simprune.train.loop import Trainer, check_config


def test_mocov3_batch_one_is_refused():
    with pytest.raises(ValueError, match="no negatives"):
        check_config(make_config({"framework": "mocov3", "batch_size": 1}))


@pytest.mark.parametrize("key", ["mixup", "cutmix"])
def test_supervised_mixing_at_batch_one_is_refused(key):
    with pytest.raises(ValueError, match="mixed with itself"):
        check_config(make_config({"framework": "supervised", "batch_size": 1, key: 0.8}))
    check_config(make_config({"framework": "supervised", "batch_size": 2, key: 0.8}))


@pytest.mark.parametrize("framework", ["dino", "supervised"])
def test_batch_one_learns(data_root, tmp_path, framework):
    torch.set_num_threads(1)
    cfg = make_config(with_heads(dict(TINY, framework=framework, batch_size=1, train_subset=8,
                                      data=str(data_root), out=str(tmp_path / "run"),
                                      eval_at_end=False)))
    check_config(cfg)
    trainer = Trainer(cfg)
    params = list(trainer.framework.trainable().parameters())
    before = [p.detach().clone() for p in params]
    for step in range(3):
        loss, _ = trainer.train_step(step)
        assert math.isfinite(float(loss)) and float(loss) != 0.0
        grad = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
        assert grad > 0.0
    assert any(not torch.equal(p.detach(), b) for p, b in zip(params, before))
