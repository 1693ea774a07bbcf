"""MoCo v3 (Chen et al., 2021) with token reduction; SimPrune pairs only the positive pairs.

Student: backbone → 3-layer BN-MLP projector → 2-layer predictor. Teacher (momentum encoder):
backbone → projector. Loss: symmetric InfoNCE at temperature ``T`` against the momentum keys of the
*whole global batch* (gathered across processes), scaled by ``2T`` as in the reference recipe. The
two views go through the backbone batched ``[v1; v2]`` (so BatchNorm sees both views together).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.data.augment import Views
from simprune.frameworks.base import DualBranch, PruneSettings, StepOutput
from simprune.models.heads import MoCoHeads
from simprune.models.vit import VisionTransformer
from simprune.train.dist import all_gather_cat, rank


def info_nce(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """InfoNCE of queries ``q: [B, d]`` against keys ``k: [B, d]`` of this process and the keys
    of every other process (negatives); the positive of row ``i`` is key ``rank·B + i``."""
    q = F.normalize(q.float(), dim=1)
    k_all = F.normalize(all_gather_cat(k.float()), dim=1)
    logits = q @ k_all.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(DualBranch):
    """MoCo v3 framework. Evaluation reads the online (student) encoder, as MoCo v3 does."""

    eval_branch = "student"

    def __init__(self, backbone: VisionTransformer, prune: PruneSettings, dim: int = 256,
                 hidden: int = 4096, temperature: float = 0.2) -> None:
        d = backbone.embed_dim
        super().__init__(backbone, MoCoHeads(d, dim, hidden, predictor=True),
                         MoCoHeads(d, dim, hidden, predictor=False), prune)
        self.teacher["head"].projector.load_state_dict(self.student["head"].projector.state_dict())
        self.temperature = temperature

    def forward(self, views: Views, progress: float) -> StepOutput:
        if len(views.globals) != 2:
            raise ValueError(f"MoCo v3 needs exactly 2 views, got {len(views.globals)}")
        g = torch.cat(views.globals, dim=0)
        dual = self.encode(g, None, progress)
        q1, q2 = self.student["head"](dual.student.cls).chunk(2)
        with torch.no_grad():
            k1, k2 = self.teacher["head"](dual.teacher.cls).chunk(2)
        loss = info_nce(q1, k2, self.temperature) + info_nce(q2, k1, self.temperature)
        return StepOutput(loss, self.pruning_logs(dual, progress), dual)
