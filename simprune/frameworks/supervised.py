"""Supervised classification, DeiT-style (METHOD.md, "Supervised training"), with any one-branch
reducer. The base of Tri-Level E-ViT and of evaluation by fine-tuning (``simprune finetune``).

A linear head reads the final CLS token (or the mean of the patch tokens that hold original
patches, leaving out fused or appended ones). Loss: cross-entropy with label smoothing; Mixup and
CutMix are options (off in the CPU recipe), and per-sample correctness always uses the un-mixed
label. Evaluation: top-1/top-5 on the test split, with the reduction plan at its final keep rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from simprune.data.augment import OneCropAugment, OneCropConfig
from simprune.drive import forward_reduced
from simprune.frameworks.base import FRAMEWORKS, Batch, DataInfo, Framework, Progress, StepOutput
from simprune.frameworks.parts import build_backbone, build_plans
from simprune.losses.ce import cross_entropy_per_sample, smooth_targets, soft_cross_entropy_per_sample
from simprune.tokens import TokenState

POOLS = ("cls", "mean")


@dataclass
class SupervisedConfig:
    """``[supervised]``: head, loss and the backbone to start from.

    Attributes:
        label_smoothing: cross-entropy label smoothing (DeiT: 0.1).
        pool: ``cls`` (DeiT) or ``mean`` (of the patch tokens that hold original patches).
        mixup, cutmix: Beta(α, α) parameters; 0 turns each off. When both are on, each batch
            uses one of them with probability 1/2.
        init_from: start the backbone from a simprune run folder / ``checkpoint.pt`` (its
            evaluation backbone) or a timm-named ``.safetensors`` file; empty: random init.
        init_branch: which backbone of a run to start from (default: the run's evaluation branch).
    """

    label_smoothing: float = 0.1
    pool: str = "cls"
    mixup: float = 0.0
    cutmix: float = 0.0
    init_from: str = ""
    init_branch: str = ""


def pool_tokens(state: TokenState, pool: str) -> Tensor:
    """``[B, D]`` features: the CLS token, or the mean of patch tokens with an original id."""
    if pool == "cls":
        return state.x[:, 0]
    real = (state.ids >= 0).to(state.x.dtype).unsqueeze(-1)  # [B, N, 1]
    return (state.patches * real).sum(1) / real.sum(1).clamp_min(1.0)


def mix_batch(x: Tensor, labels: Tensor, num_classes: int, smoothing: float, mixup: float,
              cutmix: float) -> tuple[Tensor, Tensor]:
    """Mixup or CutMix of ``x: [B, C, H, W]`` with the batch reversed; returns the mixed images
    and ``[B, K]`` soft targets. Draws from the global RNG (seeded per run, like drop-path)."""
    targets = smooth_targets(labels, num_classes, smoothing)
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    flipped = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = (1.0 - lam) ** 0.5
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + flipped * (1.0 - lam)
    return x, targets * lam + targets.flip(0) * (1.0 - lam)


@FRAMEWORKS.register("supervised")
class Supervised(Framework):
    """A ViT and a linear classifier trained with labels; one branch, no teacher."""

    Config: ClassVar[type] = SupervisedConfig
    eval_protocol: ClassVar[str] = "classify"
    needs_labels: ClassVar[bool] = True

    def __init__(self, backbone, num_classes: int, plan, cfg: SupervisedConfig) -> None:  # noqa: ANN001
        super().__init__()
        head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        self.student = nn.ModuleDict({"backbone": backbone, "head": head})
        self.plan = plan
        self.num_classes = num_classes
        self.opts = cfg

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001
        super().check(cfg)
        c: SupervisedConfig = cfg.fw
        if c.pool not in POOLS:
            raise ValueError(f"supervised.pool must be one of {', '.join(POOLS)}, got {c.pool!r}")
        if not 0.0 <= c.label_smoothing < 1.0:
            raise ValueError(f"supervised.label_smoothing must be in [0, 1), got {c.label_smoothing}")
        if c.mixup < 0 or c.cutmix < 0:
            raise ValueError(f"supervised.mixup and cutmix must be >= 0, got {c.mixup}, {c.cutmix}")
        from simprune.dist import world_size

        local = cfg.batch_size // max(1, world_size())
        if (c.mixup > 0 or c.cutmix > 0) and local < 2:
            # Batch 1 itself learns (cross-entropy needs no other sample); only the mixing is void.
            raise ValueError(f"supervised.mixup/cutmix mix each image with another one of its batch; "
                             f"with {local} image per process an image is mixed with itself and "
                             "nothing changes: use batch_size >= 2 per process, or set them to 0")

    @classmethod
    def build(cls, cfg, data: DataInfo) -> Supervised:  # noqa: ANN001 - TrainConfig
        if not data.has_labels or data.num_classes < 2:
            raise ValueError(f"framework 'supervised' needs class labels, but data set {data.name!r} "
                             f"has {'none' if not data.has_labels else data.num_classes}")
        plan, _ = build_plans(cfg)
        backbone = build_backbone(cfg, data)
        c: SupervisedConfig = cfg.fw
        fw = cls(backbone, data.num_classes, plan, c)
        if c.init_from:
            from simprune.teachers.frozen import backbone_state

            backbone_state(c.init_from, c.init_branch, into=backbone)  # loads strictly
        return fw

    def build_augment(self, cfg, data: DataInfo) -> nn.Module:  # noqa: ANN001
        return OneCropAugment(OneCropConfig(size=cfg.global_size, scale=tuple(cfg.global_scale),
                                            mean=data.mean, std=data.std))

    def logits(self, images: Tensor, t: float = 1.0):  # noqa: ANN201
        """``[B, K]`` class logits with the reduction plan at progress ``t``, and the record."""
        out = forward_reduced(self.student["backbone"], images, self.plan.reducer, self.plan.keep_rate(t))
        return self.student["head"](pool_tokens(out.state, self.opts.pool)), out

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        x, labels, c = batch.views.globals[0], batch.labels, self.opts
        mixing = c.mixup > 0 or c.cutmix > 0
        if mixing:
            x, targets = mix_batch(x, labels, self.num_classes, c.label_smoothing, c.mixup, c.cutmix)
        logits, out = self.logits(x, progress.t)
        if mixing:
            per = soft_cross_entropy_per_sample(logits, targets)
        else:
            per = cross_entropy_per_sample(logits, labels, c.label_smoothing)
        loss = per.mean()
        with torch.no_grad():
            correct = logits.argmax(-1) == labels
        logs: dict[str, Tensor | float] = {"keep_rate": self.plan.keep_rate(progress.t),
                                           "train_top1": correct.float().mean() * 100}
        for i, pt in enumerate(out.points, start=1):
            logs[f"tokens/p{i}"] = float(pt.tokens_out)
        return StepOutput(loss, per.detach(), logs, out.points, {"correct": correct})

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Evaluation logits (the plan at its final keep rate)."""
        return self.logits(images, 1.0)[0]
