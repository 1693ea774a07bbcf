"""PCAE (progressively compressed autoencoder; METHOD.md "PCAE", ANCHORS.md section 1).

- **Student**: MAE's encoder on CLS + the visible patches, then MAE's decoder, whose output is
  projected to the encoder width (not to pixels).
- **Teacher**: an EMA copy of the student encoder (the decoder has no counterpart), **initialised
  from the student when the framework is built**, in one process as in many (the reference copies
  the student only under DDP, so its single-process runs start from an independent random teacher;
  a bug). It runs without gradients and in eval mode, on **only the masked patches** of the same
  masking, with their position embeddings and **no CLS token**, and drops tokens progressively:
  after the whole of blocks ``drop_at`` (1-indexed; default 1, 5, 9, the reference's "after
  blocks 0, 4, 8"; the backbone's point placement ``block``, so each of these blocks' MLP runs on
  every token it received) it keeps ``int(drop_keep · n)`` of its ``n`` tokens (at least 1), those *least*
  similar to the mean token (``mean_sim``, score ``paper`` or the reference's ``normalized``), or
  random ones (``random_drop``, the paper's ablation). On the CPU model at mask 0.75 the teacher
  goes 48 → 24 → 12 → 6 tokens; at 0.85, 55 → 27 → 13 → 6.
- **Decoder**: the student's visible tokens plus mask tokens **only at the teacher's surviving
  positions**; one output per surviving position.
- **Loss**: ``1 − cos(pred, target)`` averaged over the surviving tokens, the target being the
  teacher's final-norm feature at the same original patch id, standardised per token over the
  feature dimension (:func:`simprune.losses.mim.feature_cosine_loss`).
- **EMA**: ``[teacher] momentum`` (the start, ``m0``) on a cosine to ``momentum_end`` (1), after
  every optimiser step.

Why ``int(·)`` and not the project's ``round(r·N)``: the paper's own counts (ViT-B: 147 → 73 → 36
→ 18, "only reconstructs 18 tokens") are the reference's truncation; rounding would give 147 → 74
→ 37 → 19. At mask 0.75 on 64 patches both rules agree (48 → 24 → 12 → 6).

Evaluation reads the **student** encoder by default (the reference fine-tunes the student), with
the patch-token mean as MAE (``eval_pool``); ``--branch teacher`` reads the EMA encoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from simprune.drive.masking import Masking, encode_masked, mask_noise, split_by_noise
from simprune.drive.single import PointRecord
from simprune.frameworks.base import FRAMEWORKS, Batch, DataInfo, Progress, StepOutput
from simprune.frameworks.mae import MaskedAutoencoder
from simprune.frameworks.parts import build_backbone
from simprune.losses.mim import feature_cosine_per_sample
from simprune.models.decoder import MAEDecoder
from simprune.models.vit import ReductionPoint, VisionTransformer, check_reduce_at
from simprune.reducers.mean_sim import SCORES, mean_sim_keep
from simprune.teachers import EMATeacher, copy_matching_
from simprune.tokens import TokenState, gather_patches


@dataclass
class PCAEConfig:
    """``[pcae]``: masking, decoder and the teacher's progressive dropping.

    Attributes:
        mask_ratio: share of the patches hidden from the student (the teacher sees exactly these).
        decoder_depth, decoder_dim, decoder_heads: the decoder (CPU recipe 8 × 64, 4 heads).
        drop_at: 1-indexed blocks after which (after their MLP) the teacher drops tokens.
        drop_keep: share of its tokens the teacher keeps at each of those blocks (``int(r·n)``).
        drop_score: ``paper`` (cosine to the mean of the raw tokens) or ``normalized`` (the
            reference code: dot with the mean of the L2-normalised tokens).
        random_drop: drop random tokens instead (the paper's "RD" ablation).
        eval_pool: ``mean`` of the patch tokens or ``cls`` for k-NN and the linear probe.
    """

    mask_ratio: float = 0.75
    decoder_depth: int = 8
    decoder_dim: int = 64
    decoder_heads: int = 4
    drop_at: list[int] = field(default_factory=lambda: [1, 5, 9])
    drop_keep: float = 0.5
    drop_score: str = "paper"
    random_drop: bool = False
    eval_pool: str = "mean"


def teacher_keep(n: int, keep: float) -> int:
    """Tokens the teacher keeps out of ``n``: ``int(keep · n)``, at least 1 (the reference's rule)."""
    return max(1, min(n, int(round(keep * n, 9))))


def teacher_counts(n_masked: int, keep: float, stages: int) -> list[int]:
    """The teacher's token counts ``[masked, after stage 1, ...]`` (e.g. ``[48, 24, 12, 6]``)."""
    counts = [n_masked]
    for _ in range(stages):
        counts.append(teacher_keep(counts[-1], keep))
    return counts


@dataclass
class PCAEStep:
    """The parts of one PCAE step, for the loss and for tests.

    Attributes:
        masking: the visible (student) and masked (teacher) ids.
        student: the student encoder's final state ``[B, 1 + K, D]``.
        teacher: the teacher's final state ``[B, M, D]`` (``ids``: surviving original patch ids).
        pred: ``[B, M, D]`` decoder outputs, row ``j`` at ``teacher.ids[:, j]``.
        per_sample: ``[B]`` loss per sample.
        student_points, teacher_points: what each reduction point kept.
    """

    masking: Masking
    student: TokenState
    teacher: TokenState
    pred: Tensor
    per_sample: Tensor
    student_points: list[PointRecord]
    teacher_points: list[PointRecord]


@FRAMEWORKS.register("pcae")
class PCAE(MaskedAutoencoder):
    """Student encoder + decoder predicting the features an EMA teacher keeps after dropping."""

    branches: ClassVar[tuple[str, ...]] = ("student", "teacher")

    Config: ClassVar[type] = PCAEConfig
    teachers: ClassVar[tuple[str, ...]] = ("ema",)
    default_teacher: ClassVar[str] = "ema"
    #: the paper's settings against MAE at 0.75 (its 2.25x is PCAE at 0.85)
    cost_mask_ratios: ClassVar[tuple[float, ...]] = (0.75, 0.85, 0.9)

    @classmethod
    def cost_label(cls, cfg) -> str:  # noqa: ANN001 - TrainConfig
        """``"pcae mask 0.85, decoder 8x64, random drop"``."""
        return super().cost_label(cfg) + (", random drop" if cfg.fw.random_drop else "")

    @classmethod
    def cost_fields(cls, cfg) -> dict:  # noqa: ANN001 - TrainConfig
        return {**super().cost_fields(cfg), "random_drop": bool(cfg.fw.random_drop)}

    def __init__(self, backbone: VisionTransformer, decoder: MAEDecoder, opts: PCAEConfig,
                 seed: int = 0, momentum: float = 0.996, momentum_end: float = 1.0) -> None:
        super().__init__(backbone, decoder, opts.mask_ratio, seed, opts.eval_pool)
        if opts.drop_score not in SCORES:
            raise ValueError(f"pcae.drop_score must be one of {', '.join(SCORES)}, got "
                             f"{opts.drop_score!r}")
        drop_at = check_reduce_at(opts.drop_at, backbone.depth)
        if 0 in drop_at:
            raise ValueError("pcae.drop_at: the teacher drops after a block (blocks "
                             f"1..{backbone.depth}); point 0 is where it takes the masked patches")
        self.opts = opts
        self.drop_at = drop_at
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone)})
        copy_matching_(self.teacher, self.student)  # equal to the student from the start
        self.teacher["backbone"].set_reduce_at((0, *drop_at), placement="block")
        self.ema = EMATeacher(self.student, self.teacher, momentum, momentum_end)

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001
        super().check(cfg)
        c: PCAEConfig = cfg.fw
        from simprune.models import model_config

        depth = int(getattr(cfg, "depth", 0) or model_config(cfg.model).depth)
        try:
            points = check_reduce_at(c.drop_at, depth)
        except ValueError as err:
            raise ValueError(f"pcae.drop_at {list(c.drop_at)}: {err}") from err
        if 0 in points:
            raise ValueError(f"pcae.drop_at {list(c.drop_at)}: blocks are 1..{depth} (the teacher "
                             "drops after a block)")
        if not 0.0 < c.drop_keep <= 1.0:
            raise ValueError(f"pcae.drop_keep must be in (0, 1], got {c.drop_keep}")
        if c.drop_score not in SCORES:
            raise ValueError(f"pcae.drop_score must be one of {', '.join(SCORES)}, got {c.drop_score!r}")
        for key in ("momentum", "momentum_end"):
            m = getattr(cfg.teacher, key)
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"teacher.{key} (the EMA teacher's momentum) must be in [0, 1], got {m}")

    @classmethod
    def build(cls, cfg, data: DataInfo) -> PCAE:  # noqa: ANN001 - TrainConfig
        backbone = build_backbone(cfg, data)
        decoder = cls.make_decoder(cfg, backbone, backbone.embed_dim)
        return cls(backbone, decoder, cfg.fw, cfg.seed, cfg.teacher.momentum, cfg.teacher.momentum_end)

    def after_step(self, progress: Progress) -> dict[str, float]:
        return {"momentum": self.ema.update(progress.t)}

    def teacher_drop(self, point: ReductionPoint, index: Tensor, step: int) -> TokenState | None:
        """The teacher's reduction at one of its ``drop_at`` blocks."""
        s = point.state
        k = teacher_keep(s.num_patches, self.opts.drop_keep)
        if k >= s.num_patches:
            return None
        if self.opts.random_drop:  # per-sample noise, like the masking (no global RNG draw)
            noise = mask_noise(index, step, self.seed * 7919 + point.block, s.num_patches)
            keep = split_by_noise(noise, k).visible.to(s.x.device)
        else:
            keep = mean_sim_keep(s.patches, k, self.opts.drop_score)
        return gather_patches(s, keep)

    @torch.no_grad()
    def encode_teacher(self, images: Tensor, masking: Masking, index: Tensor,
                       step: int) -> tuple[TokenState, list[PointRecord]]:
        """The EMA encoder on the masked patches (no CLS), dropping at ``drop_at``."""
        tb = self.teacher["backbone"]
        tb.eval()
        return encode_masked(tb, images, masking.masked,
                             lambda point: self.teacher_drop(point, index, step))

    def step_parts(self, batch: Batch, progress: Progress) -> PCAEStep:
        x = batch.views.globals[0]
        masking = self.mask(x, batch, progress)
        teacher, t_points = self.encode_teacher(x, masking, batch.index, progress.step)
        student, s_points = self.encode(x, masking)
        pred = self.decoder(student.x, masking.visible, teacher.ids)
        per = feature_cosine_per_sample(pred, teacher.x)
        return PCAEStep(masking, student, teacher, pred, per, s_points, t_points)

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        parts = self.step_parts(batch, progress)
        logs: dict[str, Tensor | float] = {"visible": float(parts.masking.visible.shape[1])}
        for i, rec in enumerate(parts.teacher_points):
            logs[f"teacher_tokens/{i}"] = float(rec.tokens_out)
        logs["decoded"] = float(parts.teacher.num_patches)
        points = [*(_branch(r, "student") for r in parts.student_points),
                  *(_branch(r, "teacher") for r in parts.teacher_points)]
        return StepOutput(parts.per_sample.mean(), parts.per_sample.detach(), logs, points)


@dataclass
class BranchRecord(PointRecord):
    """A :class:`PointRecord` that says whose point it is (``student`` or ``teacher``)."""

    branch: str = "student"


def _branch(rec: PointRecord, branch: str) -> BranchRecord:
    return BranchRecord(rec.block, rec.tokens_in, rec.tokens_out, rec.ids, rec.source, branch)


__all__ = ["PCAE", "BranchRecord", "PCAEConfig", "PCAEStep", "teacher_counts", "teacher_keep"]
