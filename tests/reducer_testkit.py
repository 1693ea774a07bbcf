"""Shared helpers of the reducer and driver tests: tiny models, synthetic reduction points, spies."""

from __future__ import annotations

import torch
from torch import Tensor

from simprune.models import ReductionPoint, VisionTransformer, ViTConfig
from simprune.models.layers import AttentionExtras
from simprune.reducers import TokenReducer
from simprune.tokens import TokenState, initial_state


def tiny_model(seed: int = 0, **overrides) -> VisionTransformer:
    """Depth 4, width 32, 2 heads, 8x8 patches of a 32-px image, reductions at blocks 2 and 3."""
    cfg = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, reduce_at=(2, 3))
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig(**cfg))
    with torch.no_grad():  # larger weights than DeiT's init: peaky, input-dependent attention
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                p.mul_(6.0)
    return model.eval()


def images(batch: int, seed: int, size: int = 32) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def softmax_rows(logits: Tensor) -> Tensor:
    e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def synthetic_point(
    x: Tensor,
    cls_attn: Tensor | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    block: int = 1,
    size: Tensor | None = None,
) -> ReductionPoint:
    """A reduction point over ``x: [B, 1 + N, D]`` (fresh bookkeeping) with given extras."""
    state = initial_state(x)
    if size is not None:
        state = TokenState(state.x, state.ids, state.source, size=size)
    return ReductionPoint(block, 0, state, AttentionExtras(cls_attn=cls_attn, q=q, k=k))


def point_from_state(state: TokenState, **extras) -> ReductionPoint:
    return ReductionPoint(2, 1, state, AttentionExtras(**extras))


class Spy(TokenReducer):
    """Wraps a one-branch reducer and records what it saw and returned at every point."""

    def __init__(self, inner: TokenReducer) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs = inner.needs
        self.adds_tokens = inner.adds_tokens
        self.calls: list[dict] = []

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        before = {
            "block": point.block,
            "x": point.state.x.detach().clone(),
            "ids": point.state.ids.clone(),
            "n": point.state.num_patches,
            "k": k,
        }
        out = self.inner(point, k)
        before["out"] = out
        self.calls.append(before)
        return out


def pair_spy(reducer):
    """A recording copy of a pair reducer (same class, same options)."""
    base = type(reducer)

    class PairSpy(base):  # type: ignore[misc, valid-type]
        def reduce_pair(self, student, teacher, k, position):
            snap = {
                "block": student.block,
                "s_x": student.state.x.detach().clone(),
                "t_x": teacher.state.x.detach().clone(),
                "s_ids": student.state.ids.clone(),
                "t_ids": teacher.state.ids.clone(),
                "n": student.state.num_patches,
                "k": k,
                "position": position,
            }
            s_new, t_new, stats = super().reduce_pair(student, teacher, k, position)
            snap.update(s_out=s_new, t_out=t_new, stats=stats)
            self.calls.append(snap)
            return s_new, t_new, stats

        def reduce_against(self, student, teacher_tokens, k, position):
            snap = {
                "block": student.block,
                "s_x": student.state.x.detach().clone(),
                "anchors": teacher_tokens.detach().clone(),
                "s_ids": student.state.ids.clone(),
                "n": student.state.num_patches,
                "k": k,
            }
            s_new, stats = super().reduce_against(student, teacher_tokens, k, position)
            snap.update(s_out=s_new, stats=stats)
            self.local_calls.append(snap)
            return s_new, stats

    spy = PairSpy.__new__(PairSpy)
    spy.__dict__.update(vars(reducer))
    spy.calls, spy.local_calls = [], []
    return spy
