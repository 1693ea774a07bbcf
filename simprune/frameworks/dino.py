"""DINO (Caron et al., 2021) with token reduction in both branches.

The student sees 2 global views and ``L`` local views; the teacher (EMA) sees the global views.
Loss: mean cross-entropy between the sharpened, centred teacher distribution of one global view and
the student distribution of every *other* view. The centre is an EMA (0.9) of the batch mean of
teacher outputs, averaged over processes; it is updated inside ``forward`` (documented state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simprune.data.augment import Views
from simprune.frameworks.base import DualBranch, PruneSettings, StepOutput
from simprune.models.heads import DINOHead
from simprune.models.vit import VisionTransformer
from simprune.train.dist import all_reduce_mean


def dino_loss(student_out: Tensor, teacher_probs: Tensor, num_global: int, student_temp: float) -> Tensor:
    """Cross-entropy over every (teacher view, student view) pair of different views.

    Args:
        student_out: ``[V·B, K]`` student logits, global views first.
        teacher_probs: ``[G·B, K]`` teacher probabilities (centred, sharpened).
    """
    s_views = F.log_softmax(student_out / student_temp, dim=-1).chunk(student_out.shape[0] // (
        teacher_probs.shape[0] // num_global))
    t_views = teacher_probs.chunk(num_global)
    total, terms = student_out.new_zeros(()), 0
    for i, t in enumerate(t_views):
        for j, s in enumerate(s_views):
            if i == j:
                continue
            total = total + (-t * s).sum(dim=-1).mean()
            terms += 1
    return total / terms


class DINO(DualBranch):
    """DINO framework: heads, centring, teacher temperature, loss and collapse diagnostics."""

    def __init__(self, backbone: VisionTransformer, prune: PruneSettings, out_dim: int = 4096,
                 hidden: int = 2048, bottleneck: int = 256, student_temp: float = 0.1,
                 teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_frac: float = 0.0, center_momentum: float = 0.9) -> None:
        dim = backbone.embed_dim
        super().__init__(backbone, DINOHead(dim, out_dim, hidden, bottleneck),
                         DINOHead(dim, out_dim, hidden, bottleneck), prune)
        self.teacher["head"].load_state_dict(self.student["head"].state_dict())
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_frac = warmup_teacher_frac
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp_at(self, progress: float) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over the first frac."""
        if self.warmup_teacher_frac <= 0 or progress >= self.warmup_teacher_frac:
            return self.teacher_temp
        f = progress / self.warmup_teacher_frac
        return self.warmup_teacher_temp + f * (self.teacher_temp - self.warmup_teacher_temp)

    def last_layer(self) -> nn.Module:
        """The layer frozen during the first epoch."""
        return self.student["head"].last_layer

    def forward(self, views: Views, progress: float) -> StepOutput:
        g = torch.cat(views.globals, dim=0)
        loc = torch.cat(views.locals, dim=0) if views.locals else None
        dual = self.encode(g, loc, progress)
        s_cls = dual.student.cls if dual.local is None else torch.cat([dual.student.cls, dual.local.cls])
        student_out = self.student["head"](s_cls)
        temp = self.teacher_temp_at(progress)
        with torch.no_grad():
            t_out = self.teacher["head"](dual.teacher.cls).float()
            t_probs = F.softmax((t_out - self.center) / temp, dim=-1)
        loss = dino_loss(student_out.float(), t_probs, len(views.globals), self.student_temp)
        logs = self.pruning_logs(dual, progress)
        with torch.no_grad():
            logs.update(collapse_stats(t_probs, self.center, temp))
            logs["teacher_temp"] = temp
            self.update_center(t_out)
        return StepOutput(loss, logs, dual)

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        batch_center = all_reduce_mean(teacher_out.mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def collapse_stats(t_probs: Tensor, center: Tensor, temp: float) -> dict[str, Tensor]:
    """Teacher-output entropy (nats; ``log K`` = uniform collapse, 0 = one-hot collapse), as a
    fraction of ``log K`` too, and the mean KL from the teacher distribution to the centre's."""
    logp = t_probs.clamp_min(1e-12).log()
    entropy = -(t_probs * logp).sum(-1).mean()
    log_c = F.log_softmax(center / temp, dim=-1)
    kl = (t_probs * (logp - log_c)).sum(-1).mean()
    return {"teacher_entropy": entropy, "teacher_entropy_frac": entropy / math.log(t_probs.shape[-1]),
            "kl_to_center": kl}
