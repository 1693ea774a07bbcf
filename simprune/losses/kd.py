"""Feature distillation from a frozen teacher into a token-pruned student (METHOD.md,
"Task-agnostic distillation"; Lu & Nakamura).

The student's features, projected to the teacher's width, are pulled towards the teacher's
final-norm features by a distance per token:

- ``cos`` (default): ``1 − cos(p, t)``;
- ``mse``: ``mean_d (p_d − t_d)²``;
- ``smooth_l1``: ``mean_d smooth_l1(p_d − t_d; β)`` (quadratic below ``β``, linear above).

``cls`` distils the CLS token alone. ``all`` adds the mean distance over the student's patch tokens
that hold original patches, each against the teacher patch tokens at the same original positions
(:func:`align_to_student`): a retained token against the teacher token at its original id; a merged
token (ToMe) against the size-weighted mean of its sources, i.e. the plain mean over the original
patches merged into it (each original patch has size 1); a token no original patch owns (EViT's
fused token, id ``-1``) is left out.

Everything is computed in at least float32; float64 stays float64. Torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DISTANCES = ("cos", "mse", "smooth_l1")
LOSSES = ("cls", "all")
TARGET_NORMS = ("none", "batch")


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_distance(kind: str) -> None:
    if kind not in DISTANCES:
        raise ValueError(f"distillation distance must be one of {', '.join(DISTANCES)}, got {kind!r}")


def distance(pred: Tensor, target: Tensor, kind: str = "cos", beta: float = 1.0) -> Tensor:
    """Distance over the last dimension: ``pred, target: [..., D]`` -> ``[...]``.

    ``beta`` is smooth-L1's threshold (``> 0``). Cosine uses ``eps = 1e-8`` on the norms.
    """
    check_distance(kind)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ; "
                         "project the student to the teacher's width first")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    p, t = pred.to(dtype), target.to(dtype)
    if kind == "cos":
        return 1.0 - F.cosine_similarity(p, t, dim=-1, eps=1e-8)
    if kind == "mse":
        return (p - t).pow(2).mean(dim=-1)
    if not beta > 0:
        raise ValueError(f"smooth_l1 beta must be > 0, got {beta}")
    return F.smooth_l1_loss(p, t, reduction="none", beta=beta).mean(dim=-1)


def standardize(x: Tensor, dims: tuple[int, ...], eps: float = 1e-6) -> Tensor:
    """Each channel (the last dimension) of ``x`` minus its mean over ``dims``, over its standard
    deviation there (biased): ``(x − μ) / sqrt(σ² + eps)``.

    Distillation targets with ``target_norm = "batch"``: a ViT's final-norm features share one
    large direction (CLS features of different images can have a mean cosine above 0.99), which
    ``1 − cos`` against the raw features mostly rewards; standardising removes it.
    """
    x = _at_least_fp32(x)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


def align_to_student(teacher_patches: Tensor, ids: Tensor, source: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher target of every student patch token, by original position.

    Args:
        teacher_patches: ``[B, N0, Dt]`` the teacher's patch tokens (unreduced, original order).
        ids: ``[B, N]`` original patch id of each student patch token (``-1``: no original owns it,
            e.g. EViT's fused token).
        source: ``[B, N0]`` the student position now holding each original patch (``-1``: dropped).
    Returns:
        ``targets: [B, N, Dt]`` the mean of the teacher tokens whose original patches each student
        token holds (``0`` where it holds none); ``valid: [B, N]`` bool, a real token (``id >= 0``)
        holding at least one original patch; ``counts: [B, N]`` the original patches each token
        holds (ToMe's size for merged tokens, 1 for a retained one).
    """
    b, n0, d = teacher_patches.shape
    n = ids.shape[1]
    if source.shape != (b, n0) or ids.shape[0] != b:
        raise ValueError(f"teacher patches {tuple(teacher_patches.shape)} do not fit source "
                         f"{tuple(source.shape)} and ids {tuple(ids.shape)}: the teacher must see the "
                         "student's original patch grid")
    t = _at_least_fp32(teacher_patches)
    held = source >= 0  # [B, N0]
    pos = source.clamp(min=0)
    counts = torch.zeros(b, n, dtype=t.dtype, device=t.device).scatter_add(1, pos, held.to(t.dtype))
    sums = torch.zeros(b, n, d, dtype=t.dtype, device=t.device).scatter_add(
        1, pos.unsqueeze(-1).expand(b, n0, d), t * held.unsqueeze(-1).to(t.dtype))
    targets = sums / counts.clamp(min=1.0).unsqueeze(-1)
    valid = (ids >= 0) & (counts > 0)
    return targets, valid, counts


def cls_distill_per_sample(pred_cls: Tensor, teacher_cls: Tensor, kind: str = "cos",
                           beta: float = 1.0) -> Tensor:
    """``pred_cls, teacher_cls: [B, Dt]`` -> ``[B]`` distances."""
    return distance(pred_cls, teacher_cls, kind, beta)


def token_distill_per_sample(pred_tokens: Tensor, targets: Tensor, valid: Tensor, kind: str = "cos",
                             beta: float = 1.0) -> Tensor:
    """Mean distance over each image's valid tokens.

    Args:
        pred_tokens: ``[B, N, Dt]`` projected student patch tokens; targets: ``[B, N, Dt]``;
        valid: ``[B, N]`` bool (from :func:`align_to_student`).
    Returns:
        ``[B]``; ``0`` for an image without a valid token.
    """
    per_token = distance(pred_tokens, targets, kind, beta)  # [B, N]
    w = valid.to(per_token.dtype)
    return (per_token * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def kd_per_sample(pred_cls: Tensor, teacher_cls: Tensor, pred_tokens: Tensor | None = None,
                  teacher_patches: Tensor | None = None, ids: Tensor | None = None,
                  source: Tensor | None = None, kind: str = "cos", token_weight: float = 1.0,
                  beta: float = 1.0) -> dict[str, Tensor]:
    """The distillation loss per image: ``cls`` = CLS distance; with the token arguments given
    (``all``), ``tokens`` = mean distance over the aligned tokens and ``total = cls + token_weight ·
    tokens``; ``valid`` = the number of tokens distilled per image. Without them ``total = cls``.
    """
    out = {"cls": cls_distill_per_sample(pred_cls, teacher_cls, kind, beta)}
    if pred_tokens is None:
        out["total"] = out["cls"]
        return out
    if teacher_patches is None or ids is None or source is None:
        raise ValueError("the token loss needs teacher_patches, ids and source")
    targets, valid, _ = align_to_student(teacher_patches, ids, source)
    out["tokens"] = token_distill_per_sample(pred_tokens, targets, valid, kind, beta)
    out["valid"] = valid.sum(dim=1)
    out["total"] = out["cls"] + token_weight * out["tokens"]
    return out


def kd_loss(pred_cls: Tensor, teacher_cls: Tensor, pred_tokens: Tensor | None = None,
            teacher_patches: Tensor | None = None, ids: Tensor | None = None,
            source: Tensor | None = None, kind: str = "cos", token_weight: float = 1.0,
            beta: float = 1.0) -> Tensor:
    """Mean of :func:`kd_per_sample`'s ``total`` over the batch: ``[]``."""
    return kd_per_sample(pred_cls, teacher_cls, pred_tokens, teacher_patches, ids, source, kind,
                         token_weight, beta)["total"].mean()
