"""MoCo v3 (Chen et al., 2021) with token reduction; SimPrune pairs only the positive pairs.

Student: backbone → 3-layer BN-MLP projector → 2-layer predictor. Teacher (momentum encoder):
backbone → projector. Loss: symmetric InfoNCE at temperature ``T`` against the momentum keys of the
*whole global batch* (gathered across processes), scaled by ``2T`` as in the reference recipe
(:mod:`simprune.losses.info_nce`). The two views go through the backbone batched ``[v1; v2]`` (so
BatchNorm sees both views together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from simprune.data.augment import TwoCropAugment, TwoCropConfig
from simprune.dist import all_gather_cat, rank
from simprune.frameworks.base import FRAMEWORKS, Batch, DataInfo, Progress, StepOutput
from simprune.frameworks.dual import DualBranch
from simprune.frameworks.parts import build_backbone, build_plans
from simprune.losses.info_nce import info_nce, info_nce_per_sample
from simprune.models.heads import MoCoHeads


@dataclass
class MoCoV3Config:
    """``[mocov3]`` (flat aliases ``moco_dim``, ``moco_hidden``, ...): heads, temperature, crops,
    and MoCo v3's ViT choices (flat aliases ``init`` and ``freeze_patch_embed``, base keys before
    they moved here)."""

    alias_prefix: ClassVar[str] = "moco_"
    #: flat names that stand for keys of this section besides ``moco_<key>``
    flat_aliases: ClassVar[dict[str, str]] = {"init": "init", "freeze_patch_embed": "freeze_patch_embed"}

    dim: int = 256  # output width of the projector and predictor
    hidden: int = 4096  # hidden width of the projector and predictor MLPs
    temperature: float = 0.2  # InfoNCE temperature
    color_ops: bool = True  # colour jitter, grayscale, blur, solarize (False: crop + flip only)
    blur: bool = True  # Gaussian blur of the views
    solarize: bool = True  # solarize the second view
    init: str = "deit"  # deit | moco: MoCo v3's Xavier init (simprune.models.init)
    freeze_patch_embed: bool = False  # MoCo v3's frozen random patch projection


@FRAMEWORKS.register("mocov3")
class MoCoV3(DualBranch):
    """MoCo v3 framework. Evaluation reads the online (student) encoder, as MoCo v3 does."""

    Config: ClassVar[type] = MoCoV3Config
    eval_branch: ClassVar[str] = "student"

    def __init__(self, backbone, plan, dim: int = 256, hidden: int = 4096,  # noqa: ANN001
                 temperature: float = 0.2, teacher_plan=None, momentum: float = 0.996,  # noqa: ANN001
                 momentum_end: float = 1.0) -> None:
        d = backbone.embed_dim
        super().__init__(backbone, MoCoHeads(d, dim, hidden, predictor=True),
                         MoCoHeads(d, dim, hidden, predictor=False), plan, teacher_plan, momentum,
                         momentum_end)
        self.temperature = temperature

    @classmethod
    def build(cls, cfg, data: DataInfo) -> MoCoV3:  # noqa: ANN001 - TrainConfig
        c: MoCoV3Config = cfg.fw
        plan, teacher_plan = build_plans(cfg)
        backbone = build_backbone(cfg, data, init=c.init, freeze_patch_embed=c.freeze_patch_embed)
        return cls(backbone, plan, c.dim, c.hidden, c.temperature, teacher_plan,
                   cfg.teacher.momentum, cfg.teacher.momentum_end)

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001
        super().check(cfg)
        from simprune.dist import world_size

        local = cfg.batch_size // max(1, world_size())
        if cfg.batch_size < 2 or local < 1:
            raise ValueError(f"MoCo v3 contrasts each image with the rest of the batch: batch_size "
                             f"{cfg.batch_size} has no negatives (the loss is exactly 0); use >= 2")

    def build_augment(self, cfg, data: DataInfo) -> nn.Module:  # noqa: ANN001
        c: MoCoV3Config = cfg.fw
        return TwoCropAugment(TwoCropConfig(
            size=cfg.global_size, scale=tuple(cfg.global_scale), mean=data.mean, std=data.std,
            color_ops=c.color_ops, **({} if c.blur else {"blur_p": (0.0, 0.0)}),
            **({} if c.solarize else {"solarize_p": (0.0, 0.0)})))

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        views, t = batch.views, progress.t
        if len(views.globals) != 2:
            raise ValueError(f"MoCo v3 needs exactly 2 views, got {len(views.globals)}")
        g = torch.cat(views.globals, dim=0)
        dual = self.encode(g, None, t)
        q1, q2 = self.student["head"](dual.student.cls).chunk(2)
        with torch.no_grad():
            k1, k2 = self.teacher["head"](dual.teacher.cls).chunk(2)
            k1_all, k2_all = all_gather_cat(k1.float()), all_gather_cat(k2.float())
        offset = rank() * q1.shape[0]
        T = self.temperature
        extra, extra_logs = self.reducer_terms(dual)
        loss = info_nce(q1, k2_all, T, offset) + info_nce(q2, k1_all, T, offset) + extra
        with torch.no_grad():
            per_sample = (info_nce_per_sample(q1, k2_all, T, offset)
                          + info_nce_per_sample(q2, k1_all, T, offset))
        return StepOutput(loss, per_sample, {**self.pruning_logs(dual, t), **extra_logs}, dual.points)
