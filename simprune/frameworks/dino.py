"""DINO (Caron et al., 2021) with token reduction in both branches.

The student sees 2 global views and ``L`` local views; the teacher (EMA) sees the global views.
Loss: mean cross-entropy between the sharpened, centred teacher distribution of one global view and
the student distribution of every *other* view (:mod:`simprune.losses.dino`). The centre is an EMA
(0.9) of the batch mean of teacher outputs, averaged over processes; it is updated inside
``forward`` (documented state). The last layer of the student head gets no update during the first
``freeze_last_layer`` epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simprune.data.augment import MultiCropAugment, MultiCropConfig
from simprune.dist import all_reduce_mean
from simprune.frameworks.base import FRAMEWORKS, Batch, DataInfo, Progress, StepOutput
from simprune.frameworks.dual import DualBranch
from simprune.frameworks.parts import build_backbone, build_plans
from simprune.losses.dino import collapse_stats, dino_loss, dino_loss_per_sample, teacher_temp_at
from simprune.models.heads import DINOHead


@dataclass
class DINOConfig:
    """``[dino]``: heads, temperatures, centring, multi-crop and augmentation."""

    out_dim: int = 4096  # prototypes of the DINO head's last layer
    head_hidden: int = 2048  # width of the head's MLP
    bottleneck: int = 256  # width before the weight-normalised last layer
    student_temp: float = 0.1  # temperature of the student's softmax
    teacher_temp: float = 0.04  # temperature of the teacher's softmax after its warm-up
    warmup_teacher_temp: float = 0.04  # teacher temperature at the start of its warm-up
    warmup_teacher_frac: float = 0.0  # share of training the teacher temperature warms up over
    center_momentum: float = 0.9  # EMA momentum of the teacher's centre
    freeze_last_layer: float = 1.0  # epochs the head's last layer stays frozen
    local_views: int = 0  # small local crops per image (multi-crop; 0: none)
    local_size: int = 16  # local crop size (px)
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])  # local crops' area range
    color_ops: bool = True  # colour jitter, grayscale, blur, solarize (False: crop + flip only)
    blur: bool = True  # Gaussian blur (small images often do better without)
    solarize: bool = True  # solarize the second global view


@FRAMEWORKS.register("dino")
class DINO(DualBranch):
    """DINO framework: heads, centring, teacher temperature, loss and collapse diagnostics."""

    Config: ClassVar[type] = DINOConfig

    def __init__(self, backbone, plan, out_dim: int = 4096, hidden: int = 2048,  # noqa: ANN001
                 bottleneck: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_frac: float = 0.0,
                 center_momentum: float = 0.9, freeze_last_layer: float = 0.0,
                 teacher_plan=None, momentum: float = 0.996, momentum_end: float = 1.0) -> None:  # noqa: ANN001
        dim = backbone.embed_dim
        super().__init__(backbone, DINOHead(dim, out_dim, hidden, bottleneck),
                         DINOHead(dim, out_dim, hidden, bottleneck), plan, teacher_plan, momentum,
                         momentum_end)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_frac = warmup_teacher_frac
        self.center_momentum = center_momentum
        self.freeze_last_layer = freeze_last_layer
        self.register_buffer("center", torch.zeros(1, out_dim))

    @classmethod
    def options(cls, cfg) -> dict[str, Any]:  # noqa: ANN001 - TrainConfig
        """The constructor's keyword arguments that a config sets (a subclass adds its own)."""
        c: DINOConfig = cfg.fw
        return dict(out_dim=c.out_dim, hidden=c.head_hidden, bottleneck=c.bottleneck,
                    student_temp=c.student_temp, teacher_temp=c.teacher_temp,
                    warmup_teacher_temp=c.warmup_teacher_temp,
                    warmup_teacher_frac=c.warmup_teacher_frac, center_momentum=c.center_momentum,
                    freeze_last_layer=c.freeze_last_layer, momentum=cfg.teacher.momentum,
                    momentum_end=cfg.teacher.momentum_end)

    @classmethod
    def build(cls, cfg, data: DataInfo) -> DINO:  # noqa: ANN001 - TrainConfig
        plan, teacher_plan = build_plans(cfg)
        return cls(build_backbone(cfg, data), plan, teacher_plan=teacher_plan, **cls.options(cfg))

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001
        super().check(cfg)
        if cfg.fw.local_views < 0:
            raise ValueError(f"dino.local_views must be >= 0, got {cfg.fw.local_views}")
        if not 0.0 <= cfg.fw.center_momentum <= 1.0:
            raise ValueError(f"dino.center_momentum must be in [0, 1], got {cfg.fw.center_momentum}")

    def build_augment(self, cfg, data: DataInfo) -> nn.Module:  # noqa: ANN001
        c: DINOConfig = cfg.fw
        return MultiCropAugment(MultiCropConfig(
            global_size=cfg.global_size, local_size=c.local_size, n_local=c.local_views,
            global_scale=tuple(cfg.global_scale), local_scale=tuple(c.local_scale),
            mean=data.mean, std=data.std, color_ops=c.color_ops,
            **({} if c.blur else {"blur_p_global": (0.0, 0.0), "blur_p_local": 0.0}),
            **({} if c.solarize else {"solarize_p_global": (0.0, 0.0)})))

    def teacher_temp_at(self, t: float) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over the first frac."""
        return teacher_temp_at(t, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_frac)

    def last_layer(self) -> nn.Module:
        """The layer frozen during the first ``freeze_last_layer`` epochs."""
        return self.student["head"].last_layer

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        views, t = batch.views, progress.t
        g = torch.cat(views.globals, dim=0)
        loc = torch.cat(views.locals, dim=0) if views.locals else None
        dual = self.encode(g, loc, t)
        s_cls = dual.student.cls if dual.local is None else torch.cat([dual.student.cls, dual.local.cls])
        student_out = self.student["head"](s_cls)
        temp = self.teacher_temp_at(t)
        with torch.no_grad():
            t_out = self.teacher["head"](dual.teacher.cls).float()
            t_probs = F.softmax((t_out - self.center) / temp, dim=-1)
        s_out = student_out.float()
        extra, extra_logs = self.reducer_terms(dual)
        loss = dino_loss(s_out, t_probs, len(views.globals), self.student_temp) + extra
        logs = {**self.pruning_logs(dual, t), **extra_logs}
        with torch.no_grad():
            per_sample = dino_loss_per_sample(s_out, t_probs, len(views.globals), self.student_temp)
            logs.update(collapse_stats(t_probs, self.center, temp))
            logs["teacher_temp"] = temp
            self.update_center(t_out)
        return StepOutput(loss, per_sample, logs, dual.points)

    def before_optimizer_step(self, progress: Progress) -> None:
        if progress.epoch < self.freeze_last_layer:
            for p in self.last_layer().parameters():
                p.grad = None

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        batch_center = all_reduce_mean(teacher_out.mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
