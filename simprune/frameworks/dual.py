"""What the dual-branch SSL frameworks (DINO, MoCo v3) share: a student, an EMA teacher, a
reduction plan per branch (paired branches reduce in lock-step) and the pruning diagnostics."""

from __future__ import annotations

import copy
from typing import ClassVar

from torch import Tensor, nn

from simprune.drive import DualOutput, dual_forward
from simprune.drive.plan import ReductionPlan
from simprune.frameworks.base import Framework, Progress
from simprune.models.vit import VisionTransformer
from simprune.teachers import EMATeacher, copy_matching_


class DualBranch(Framework):
    """Student (trained) and teacher (EMA of the student) branches, each a backbone and a head.

    Subclasses define the heads and the loss in ``forward(batch, progress) -> StepOutput``.
    """

    branches: ClassVar[tuple[str, ...]] = ("student", "teacher")

    teachers: ClassVar[tuple[str, ...]] = ("ema",)
    default_teacher: ClassVar[str] = "ema"
    pair_reducers: ClassVar[bool] = True
    eval_branch: ClassVar[str] = "teacher"

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001 - TrainConfig
        super().check(cfg)
        for key in ("momentum", "momentum_end"):
            m = getattr(cfg.teacher, key)
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"teacher.{key} (the EMA teacher's momentum) must be in [0, 1], got {m}")

    def __init__(self, backbone: VisionTransformer, student_head: nn.Module, teacher_head: nn.Module,
                 plan: ReductionPlan, teacher_plan: ReductionPlan | None = None,
                 momentum: float = 0.996, momentum_end: float = 1.0) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "head": student_head})
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": teacher_head})
        self.student_only = copy_matching_(self.teacher, self.student)  # e.g. MoCo's predictor
        self.plan = plan
        self.teacher_plan = plan if teacher_plan is None else teacher_plan
        self.ema = EMATeacher(self.student, self.teacher, momentum, momentum_end)
        bind = getattr(plan.reducer, "bind", None)
        if bind is not None:
            # a reducer with trained parts (dynamic_simprune's gates): among the student's modules,
            # so the optimiser, gradient clipping and checkpoints see them; the EMA skips them
            self.student["reducer"] = bind(backbone)
            self.idle_parameters = True  # no gate runs before the reducer's warm-up ends

    @property
    def reducer(self):  # noqa: ANN201 - the student's reducer (or None)
        return self.plan.reducer

    def encode(self, globals_: Tensor, locals_: Tensor | None, t: float) -> DualOutput:
        """Both backbones on ``globals_: [2B, C, H, W]`` (+ student ``locals_``), with pruning."""
        # Teacher backbone in eval mode (no drop-path); its head in train mode so BatchNorm (MoCo
        # v3's momentum projector) normalises with batch statistics, as the reference does: the
        # EMA copies parameters, not BN buffers, so running statistics would be meaningless.
        self.teacher["backbone"].eval()
        self.teacher["head"].train()
        teacher_reducer = "same" if self.teacher_plan is self.plan else self.teacher_plan.reducer
        return dual_forward(self.student["backbone"], self.teacher["backbone"], globals_, globals_,
                            self.plan.reducer, self.plan.keep_rate(t), self.plan.position(t), locals_,
                            teacher_reducer=teacher_reducer)

    def after_step(self, progress: Progress) -> dict[str, float]:
        return {"momentum": self.ema.update(progress.t)}

    def reducer_terms(self, dual: DualOutput) -> tuple[Tensor | float, dict[str, Tensor | float]]:
        """What the reducer adds to the loss (dynamic_simprune: its FLOPs-budget penalty) and its
        logs; ``(0.0, {})`` for reducers without one."""
        terms = getattr(self.plan.reducer, "budget_terms", None)
        return terms(dual) if terms is not None else (0.0, {})

    def pruning_logs(self, dual: DualOutput, t: float) -> dict[str, Tensor | float]:
        """Tokens kept per point, window position and SimPrune's pair statistics: many-to-one,
        duplicate partners, the teacher's fill-up share, mean similarity in the window and of all
        pairs (device tensors: read only at log steps)."""
        logs: dict[str, Tensor | float] = {"keep_rate": self.plan.keep_rate(t)}
        if self.plan.is_pair:
            logs["window"] = self.plan.position(t)
        for i, pt in enumerate(dual.points, start=1):
            logs[f"tokens/p{i}"] = float(pt.student.tokens_out)
            if pt.stats is not None:
                logs[f"m2o/p{i}"] = pt.stats.many_to_one
                logs[f"dup/p{i}"] = pt.stats.dup_partners
                logs[f"sim_kept/p{i}"] = pt.stats.sim_kept
                logs[f"sim/p{i}"] = pt.stats.sim_mean
                if pt.stats.fill_up is not None:
                    logs[f"fill/p{i}"] = pt.stats.fill_up
                if pt.stats.fallback is not None:
                    logs[f"fallback/p{i}"] = pt.stats.fallback
        return logs
