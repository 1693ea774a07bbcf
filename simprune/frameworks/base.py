"""What every dual-branch SSL framework shares: the two branches, the teacher EMA and pruning."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from simprune.drive import DualOutput, dual_forward
from simprune.models.vit import VisionTransformer
from simprune.reducers import KeepRateSchedule, create_reducer, window_position
from simprune.reducers.schedule import WINDOWS

DENSE = "dense"


@dataclass
class PruneSettings:
    """How tokens are reduced during training.

    Attributes:
        method: ``"dense"`` or a registered reducer name (``simprune``, ``evit``, ``tome``, ...).
        keep_rate: target keep rate per reduction point.
        window: SimPrune window schedule (``sliding``, ``prune_similar``, ...).
        keep_warmup: ``(start, end)`` progress of EViT's keep-rate warm-up (``(0, 0)``: none).
        options: extra reducer options (e.g. ``{"metric": "keys"}`` for SimPrune).
    """

    method: str = DENSE
    keep_rate: float = 1.0
    window: str = "sliding"
    keep_warmup: tuple[float, float] = (0.0, 0.0)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """A framework forward: the loss, scalar diagnostics (device tensors or floats) and tokens."""

    loss: Tensor
    logs: dict[str, Tensor | float]
    dual: DualOutput


class DualBranch(nn.Module):
    """Student (trained) and teacher (EMA of the student) branches, each a backbone and a head.

    Subclasses define the heads and the loss in ``forward(views, progress) -> StepOutput``.
    """

    #: the backbone whose features evaluation reads, as the framework's reference protocol does
    eval_branch: str = "teacher"

    def __init__(self, backbone: VisionTransformer, student_head: nn.Module,
                 teacher_head: nn.Module, prune: PruneSettings) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "head": student_head})
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": teacher_head})
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.prune = prune
        self.reducer = None if prune.method == DENSE else create_reducer(prune.method, **prune.options)
        self.keep_schedule = KeepRateSchedule(prune.keep_rate, *prune.keep_warmup)
        WINDOWS.get(prune.window)  # validate early
        self._ema_pairs = self._pair_parameters()

    def _pair_parameters(self) -> list[tuple[str, str]]:
        s_names = dict(self.student.named_parameters())
        return [(n, n) for n, _ in self.teacher.named_parameters() if n in s_names]

    def pruning_at(self, progress: float) -> tuple[float, float]:
        """``(keep rate, window position)`` at training progress ``t ∈ [0, 1]``."""
        return self.keep_schedule(progress), window_position(self.prune.window, progress)

    def encode(self, globals_: Tensor, locals_: Tensor | None, progress: float) -> DualOutput:
        """Both backbones on ``globals_: [2B, C, H, W]`` (+ student ``locals_``), with pruning."""
        keep_rate, position = self.pruning_at(progress)
        # Teacher backbone in eval mode (no drop-path); its head in train mode so BatchNorm (MoCo
        # v3's momentum projector) normalises with batch statistics, as the reference does: the
        # EMA copies parameters, not BN buffers, so running statistics would be meaningless.
        self.teacher["backbone"].eval()
        self.teacher["head"].train()
        return dual_forward(self.student["backbone"], self.teacher["backbone"], globals_, globals_,
                            self.reducer, keep_rate, position, locals_)

    def eval_backbone(self, branch: str | None = None) -> VisionTransformer:
        """The backbone to evaluate: ``branch`` ("teacher"/"student") or the framework's default."""
        branch = branch or self.eval_branch
        if branch not in ("teacher", "student"):
            raise ValueError(f"branch must be 'teacher' or 'student', got {branch!r}")
        return (self.teacher if branch == "teacher" else self.student)["backbone"]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher ← m · teacher + (1 − m) · student`` for every shared parameter."""
        s = dict(self.student.named_parameters())
        t = dict(self.teacher.named_parameters())
        t_list = [t[n] for n, _ in self._ema_pairs]
        s_list = [s[n].detach() for _, n in self._ema_pairs]
        torch._foreach_lerp_(t_list, s_list, 1.0 - momentum)

    def pruning_logs(self, dual: DualOutput, progress: float) -> dict[str, Tensor | float]:
        """Tokens kept per point, window position and SimPrune's pair statistics."""
        keep_rate, position = self.pruning_at(progress)
        logs: dict[str, Tensor | float] = {"keep_rate": keep_rate}
        if self.reducer is not None and self.reducer.is_pair:
            logs["window"] = position
        for i, pt in enumerate(dual.points, start=1):
            logs[f"tokens/p{i}"] = float(pt.student.tokens_out)
            if pt.stats is not None:
                logs[f"m2o/p{i}"] = pt.stats.many_to_one
                logs[f"dup/p{i}"] = pt.stats.dup_partners
                logs[f"sim_kept/p{i}"] = pt.stats.sim_kept
        return logs
