"""DINO's frozen last layer: no update while ``progress.epoch < dino.freeze_last_layer``, then
normal updates; everything else trains throughout."""

from __future__ import annotations

import torch
from train_testkit import TINY_HEADS

from simprune.config import make_config
from simprune.data.augment import Views
from simprune.frameworks import Batch, Progress
from simprune.run import build_framework


def _step(fw, opt, progress: Progress, seed: int) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    views = Views(globals=[torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)], locals=[],
                  boxes=torch.zeros(2, 4, 4), flipped=torch.zeros(2, 4, dtype=torch.bool))
    out = fw(Batch(views, torch.full((4,), -1), torch.arange(4)), progress)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    fw.before_optimizer_step(progress)
    opt.step()


def test_last_layer_frozen_for_the_first_epochs_then_trained():
    cfg = make_config({"framework": "dino", "model": "vit_nano_patch4_32", "drop_path": 0.0,
                       **TINY_HEADS["dino"], "dino": {"freeze_last_layer": 1.0}})
    torch.manual_seed(0)
    fw = build_framework(cfg)
    opt = torch.optim.SGD(fw.trainable().parameters(), lr=0.5)
    last = fw.last_layer()
    assert last is fw.student["head"].last_layer
    others = [p for n, p in fw.trainable().named_parameters() if not n.startswith("head.last_layer")]
    last0 = [p.detach().clone() for p in last.parameters()]
    others0 = [p.detach().clone() for p in others]

    for step in range(3):  # epoch 0, 1/3, 2/3: frozen
        _step(fw, opt, Progress(step, 12, steps_per_epoch=3), step)
        assert all(p.grad is None for p in last.parameters())
    assert all(torch.equal(a, b) for a, b in zip(last0, last.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(others0, others))

    _step(fw, opt, Progress(3, 12, steps_per_epoch=3), 3)  # epoch 1.0: trained again
    assert any(not torch.equal(a, b) for a, b in zip(last0, last.parameters()))
