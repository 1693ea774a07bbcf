"""Bitwise guard for the move of the losses out of ``simprune.frameworks`` (issue 11, item 5).

Each function of ``simprune.losses`` must give bit-for-bit the results of the code the frameworks
run today (single process, so the collectives are identities and the InfoNCE offset is 0). Once the
frameworks call ``simprune.losses`` themselves this file compares a function with itself: delete it
then, together with the old definitions.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from simprune.frameworks import dino as old_dino
from simprune.frameworks import mocov3 as old_moco
from simprune.frameworks.base import DualBranch
from simprune.losses import (
    collapse_stats,
    dino_loss,
    ema_update_,
    info_nce,
    momentum_at,
    teacher_probs,
    teacher_temp_at,
    update_center_,
)
from simprune.train.optim import cosine


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize(("num_global", "num_local", "seed"), [(2, 0, 0), (2, 6, 1), (1, 3, 2)])
def test_dino_loss_bitwise(num_global, num_local, seed):
    g = torch.Generator().manual_seed(seed)
    b, k = 5, 64
    student = 4 * torch.randn((num_global + num_local) * b, k, generator=g)
    t_out = torch.randn(num_global * b, k, generator=g)
    center = torch.randn(1, k, generator=g)
    probs = teacher_probs(t_out, center, 0.04)
    assert _bitwise(probs, torch.nn.functional.softmax((t_out - center) / 0.04, dim=-1))
    assert _bitwise(dino_loss(student, probs, num_global, 0.1),
                    old_dino.dino_loss(student, probs, num_global, 0.1))


def test_dino_loss_gradient_bitwise():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(20, 32, generator=g)
    probs = torch.softmax(torch.randn(8, 32, generator=g) / 0.05, dim=-1)
    new, old = student.clone().requires_grad_(True), student.clone().requires_grad_(True)
    dino_loss(new, probs, 2, 0.1).backward()
    old_dino.dino_loss(old, probs, 2, 0.1).backward()
    assert _bitwise(new.grad, old.grad)


def test_collapse_stats_bitwise():
    g = torch.Generator().manual_seed(4)
    center = torch.randn(1, 50, generator=g)
    probs = teacher_probs(torch.randn(12, 50, generator=g), center, 0.07)
    new, old = collapse_stats(probs, center, 0.07), old_dino.collapse_stats(probs, center, 0.07)
    assert new.keys() == old.keys()
    assert all(_bitwise(new[key], old[key]) for key in new)


def test_teacher_temp_bitwise():
    for frac in (0.0, 0.3, 1.0):
        host = SimpleNamespace(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_frac=frac)
        for i in range(23):
            p = i / 20
            assert teacher_temp_at(p, 0.04, 0.07, frac) == old_dino.DINO.teacher_temp_at(host, p)


def test_center_update_bitwise():
    g = torch.Generator().manual_seed(5)
    host = SimpleNamespace(center=torch.randn(1, 40, generator=g), center_momentum=0.9)
    center = host.center.clone()
    for _ in range(5):
        t_out = torch.randn(16, 40, generator=g)
        old_dino.DINO.update_center(host, t_out)
        update_center_(center, t_out.mean(dim=0, keepdim=True), 0.9)
        assert _bitwise(center, host.center)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_info_nce_bitwise(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    assert _bitwise(info_nce(q, k, 0.2, offset=0), old_moco.info_nce(q, k, 0.2))
    symmetric_new = info_nce(q, k, 0.2, 0) + info_nce(k, q, 0.2, 0)
    assert _bitwise(symmetric_new, old_moco.info_nce(q, k, 0.2) + old_moco.info_nce(k, q, 0.2))


def test_info_nce_gradient_bitwise():
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    new, old = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    info_nce(new, k, 0.2).backward()
    old_moco.info_nce(old, k, 0.2).backward()
    assert _bitwise(new.grad, old.grad)


def test_ema_update_bitwise():
    def pair():
        torch.manual_seed(7)
        s, t = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4)), nn.Sequential(nn.Linear(6, 4),
                                                                               nn.LayerNorm(4))
        for p in t.parameters():
            p.requires_grad_(False)
        return s, t

    s_old, t_old = pair()
    host = SimpleNamespace(student=s_old, teacher=t_old,
                           _ema_pairs=[(n, n) for n, _ in t_old.named_parameters()])
    s_new, t_new = pair()
    for m in (0.996, 0.5, 0.0, 1.0):
        DualBranch.update_teacher(host, m)
        ema_update_(list(t_new.parameters()), list(s_new.parameters()), m)
        assert all(_bitwise(a, b) for a, b in zip(t_new.parameters(), t_old.parameters()))


def test_momentum_schedule_bitwise():
    for start, end in ((0.996, 1.0), (0.9, 0.99), (1.0, 0.5)):
        for i in range(-2, 43):
            assert momentum_at(i / 40, start, end) == cosine(start, end, i / 40)
